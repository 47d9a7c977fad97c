"""The compute planner (train/plan.py, `phiforge plan`): Phi-4's model-card figures and a measured activation count."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES, phiforge

from phiforge.errors import UserError
from phiforge.model import activation_values, build_model, load_config, model_info
from phiforge.recipe import load_recipe

from phiforge.train.plan import plan

PHI4 = load_recipe(RECIPES / "phi4.yaml")


def test_phi4_on_1920_h100s_takes_the_model_cards_21_days_at_26_percent_mfu():
    p = plan(PHI4, gpus=1920, gpu="h100", mfu=0.26)
    assert 14.5e9 < p.model["parameters"] < 14.8e9  # Phi-4 is a 14B model
    (pretrain,) = p.stages
    assert pretrain.tokens == 10e12 and pretrain.flops_per_token == pytest.approx(6 * 14.15e9 + 6 * 40 * 5120 * 4096, rel=0.01)
    assert 20 < p.days < 22 and p.memory.fits and p.warnings == []
    # one GPU holds neither the weights nor the optimizer states: 16 bytes a parameter is 218 GiB
    alone = plan(PHI4, gpus=1, gpu="h100")
    assert not alone.memory.fits and alone.memory.sharded_states > 200 and "does not fit" in alone.warnings[0]
    assert alone.days == pytest.approx(p.days * 1920 * 0.26 / 0.35, rel=1e-6)  # days scale with 1 / (GPUs x MFU)


def test_checkpointing_and_gpu_count_trade_memory_as_expected():
    plain = plan(PHI4, gpus=64, gpu="h100")
    ckpt = plan(PHI4, gpus=64, gpu="h100", checkpointing="block")
    assert ckpt.memory.activations < plain.memory.activations / 10
    assert plan(PHI4, gpus=8, gpu="h200").memory.sharded_states == pytest.approx(plain.memory.sharded_states * 64 / 8, rel=0.01)
    rows = {r["gpus"]: r for r in plain.by_gpu_count}
    assert not rows[1]["fits"] and rows[64]["fits"] and rows[4096]["days"] < rows[64]["days"]
    assert "exceed the global batch" in plan(PHI4, gpus=8192, gpu="h100").warnings[0]  # 5,760 sequences a step


def test_activation_count_matches_what_autograd_saves_in_a_real_phi3_block():
    config = load_config("tiny")
    model = build_model(config, seed=0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 128, config.hidden_size, requires_grad=True)
    rope = model.model.rotary_emb(x, torch.arange(128)[None])
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.model.layers[0](x, position_embeddings=rope, attention_mask=None)
    measured = sum(saved.values()) / 4  # fp32 values
    one_block = activation_values(model_info(config), tokens=256, checkpointing="none") / config.num_hidden_layers
    assert one_block == pytest.approx(measured, rel=0.05), (one_block, measured)


def test_cli_prints_the_plan_and_json_and_rejects_bad_options():
    out = phiforge("plan", "phi4", "--gpus", "1920", "--gpu", "h100", "--mfu", "0.26").stdout
    assert "21.1 days on 1,920 h100 at 26% MFU" in out and "fits" in out
    data = json.loads(phiforge("plan", "phi4", "--gpus", "1", "--json").stdout)
    assert data["memory"]["fits"] is False and data["mfu"] == 0.35 and len(data["by_gpu_count"]) >= 8
    bad = phiforge("plan", "phi4", "--gpu", "tpu", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --gpu tpu: unknown device")
    with pytest.raises(UserError, match="no pretrain section"):
        plan(load_recipe(RECIPES / "smollm2-posttrain.yaml"), gpus=8, gpu="h100")
