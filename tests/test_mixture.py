"""The mixture planner: the report's Table 5 from a recipe, and the same quotas the packer fills."""

from __future__ import annotations


import numpy as np
import pytest
import yaml
from conftest import RECIPES, SMOKE, phiforge

from phiforge.data.documents import DocRefs
from phiforge.data.mixture import mix_documents, plan
from phiforge.errors import UserError
from phiforge.recipe import load_recipe

PHI4 = RECIPES / "phi4.yaml"
TABLE_5 = {"web": 1.2, "web_rewrites": 5.2, "synthetic": 13.8, "code": 2.4, "acquired": 1.7}


def test_phi4_plan_reproduces_the_reports_epochs(tmp_path):
    # The recipe's jsonl sources do not exist: planning must not need them.
    assert not (RECIPES / "data").exists()
    p = plan(load_recipe(PHI4), tmp_path)
    assert p.total_tokens == 10 * 10**12 and p.unknown == []
    assert {n: pytest.approx(e, abs=0.05) for n, e in TABLE_5.items()} == {n: d.epochs for n, d in p.draws.items()}
    assert p.draws["synthetic"].tokens == 4 * 10**12

    table = phiforge("mixture", "plan", PHI4, "--max-epochs", "10").stdout
    rows = {line.split()[1]: line.split()[-2] for line in table.splitlines() if line.split()[1:2] in ([n] for n in TABLE_5)}
    assert rows == {n: f"{e:.1f}" for n, e in TABLE_5.items()}
    assert "10T tokens" in table and "290B" in table
    assert "warning: source 'synthetic' would be repeated 13.8 times (over max_epochs 10)" in " ".join(table.split())


def test_plan_says_which_sources_lack_unique_tokens(tmp_path):
    data = yaml.safe_load(PHI4.read_text())
    data["pretrain"]["mixture"]["code"] = 0.2  # a bare share: no unique_tokens
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    p = plan(load_recipe(recipe), tmp_path / "no-run")
    assert p.unknown == ["code"] and p.as_dict()["sources"]["code"]["epochs"] is None
    assert p.draws["web"].epochs == pytest.approx(1.5 / 1.3)
    out = phiforge("mixture", "plan", recipe, "--run-dir", tmp_path / "no-run").stdout
    assert "unknown unique tokens for code: give pretrain.mixture.<name>.unique_tokens" in " ".join(out.split())


def test_plan_counts_unique_tokens_in_the_run_like_the_packer(tmp_path):
    from phiforge.data.documents import tokenize
    from phiforge.data.sources import source_stage
    from phiforge.files import read_jsonl
    from phiforge.pipeline import run_stage, stages_of
    from phiforge.tokenizer import load_tokenizer

    recipe, run_dir = load_recipe(SMOKE), tmp_path / "run"
    for stage in stages_of(recipe)[:3]:  # corpus, synth, tokenizer
        run_stage(recipe, run_dir, stage)
    p = plan(recipe, run_dir)
    assert p.unknown == [] and sorted(p.measured) == ["algebra", "arithmetic", "code", "docs", "passkey"]

    # The packer on the same corpus: same unique tokens, and quotas filled to within one document.
    cfg = recipe.pretrain
    tok = load_tokenizer(run_dir / "tokenizer" / "tokenizer")
    docs = {n: tokenize(tok, [r["text"] for r in read_jsonl(run_dir / source_stage(recipe, n) / "train" / f"{n}.jsonl")])
            for n in cfg.shares}
    pools = {n: DocRefs.whole(i, np.array([len(d) for d in docs[n]])) for i, n in enumerate(cfg.shares)}
    _, draws = mix_documents(pools, cfg.shares, cfg.token_budget, seed=0)
    for name, planned in p.draws.items():
        assert planned.unique_tokens == draws[name].unique_tokens
        longest = max(map(len, docs[name])) + 1
        assert planned.tokens <= draws[name].tokens < planned.tokens + longest


def test_mixture_reproduces_epochs_per_source():
    docs = {"small": DocRefs.whole(0, np.full(10, 9)), "big": DocRefs.whole(1, np.full(1000, 9))}  # 100, 10,000 tokens
    mixed, draws = mix_documents(docs, {"small": 0.5, "big": 0.5}, total_tokens=2000, seed=0)
    assert draws["small"].epochs == pytest.approx(10, rel=0.05)  # a small source repeats
    assert draws["big"].epochs == pytest.approx(0.1, rel=0.05)  # a big one is subsampled
    assert int((mixed.length + 1).sum()) == draws["small"].tokens + draws["big"].tokens
    assert set(mixed.source[:40].tolist()) == {0, 1}  # shuffled across sources


def test_bad_mixture_entry_names_the_key(tmp_path):
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"]["mixture"]["docs"] = {"share": 0.2, "unique_tokns": 1e9}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"unknown key 'pretrain.mixture.docs.unique_tokns'"):
        load_recipe(recipe)


def test_builtin_recipes_load():
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = load_recipe(path)
        if recipe.pretrain is not None:  # post-training-only recipes (smollm2-posttrain) have no mixture
            assert recipe.pretrain.shares and recipe.pretrain.token_budget > 0


def test_the_order_a_recipe_lists_its_sources_in_changes_nothing_drawn():
    """The config hash sorts the mixture's keys, so the draw must not depend on their order either."""
    pools = {"a": DocRefs.whole(0, np.full(50, 7)), "b": DocRefs.whole(1, np.full(80, 5)),
             "c": DocRefs.whole(2, np.arange(1, 30))}
    one, draws_one = mix_documents(pools, {"a": 0.5, "b": 0.3, "c": 0.2}, 1500, seed=1)
    two, draws_two = mix_documents(pools, {"c": 0.2, "a": 0.5, "b": 0.3}, 1500, seed=1)
    assert all(np.array_equal(getattr(one, f), getattr(two, f)) for f in ("source", "doc", "length"))
    assert draws_one == draws_two and list(draws_two) == ["c", "a", "b"]  # reported in the recipe's order
