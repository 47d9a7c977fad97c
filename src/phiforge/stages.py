"""Every stage, in run order: the one list. Each stage module declares its own `STAGE` next to its run function;
the pipeline and the CLI import this list, the stage modules never do (they get it through `StageContext.stages`)."""

from __future__ import annotations

from phiforge import ablation, report
from phiforge.data import corpus
from phiforge.eval import stage as eval_stage
from phiforge.posttrain import sft
from phiforge.posttrain import stages as posttrain
from phiforge.stage import Stage
from phiforge.synth import stage as synth
from phiforge.tokenizer import stage as tokenizer
from phiforge.train import stages as train

STAGES: tuple[Stage, ...] = (
    corpus.STAGE,
    synth.STAGE,
    tokenizer.STAGE,
    train.PRETRAIN,
    train.MIDTRAIN,
    sft.STAGE,
    posttrain.PTS,
    posttrain.DPO,
    posttrain.JUDGE_DPO,
    posttrain.HALLUCINATION,
    ablation.STAGE,
    eval_stage.STAGE,
    report.STAGE,
)
