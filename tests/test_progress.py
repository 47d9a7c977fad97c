"""The run's progress line: stage i of N and the whole run's ETA, calibrated by the speed measured so far."""

from __future__ import annotations

from phiforge import progress
from phiforge.pipeline import stages_of
from phiforge.recipe import load_recipe


def test_eta_counts_every_stage_left_and_scales_by_this_runs_speed(monkeypatch):
    recipe = load_recipe("tiny")
    names = [s.name for s in stages_of(recipe)]
    now = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    run = progress.RunProgress(recipe, stages_of(recipe))
    assert all(e > 0 for e in run.estimates)
    run.begin(0)
    assert abs(run.eta() - sum(run.estimates)) < 1e-6  # nothing measured yet: the reference estimates
    assert run.line().startswith(f"stage 1 of {len(names)}: corpus (elapsed 0:00, whole run ETA ")
    now[0] += 2 * run.estimates[0]  # the first stage took twice its estimate: this machine is half as fast
    run.end(0, ran=True)
    run.begin(1)
    assert abs(run.eta() - 2 * sum(run.estimates[1:])) < 1e-6
    progress.activate(run)
    try:
        assert progress.bar_label("synth qa") == f"synth qa [stage 2 of {len(names)}, run ETA {progress._clock(run.eta())}]"
    finally:
        progress.activate(None)
    assert progress.bar_label("synth qa") == "synth qa"  # outside a run (a single-stage command): the name alone


def test_skipped_stages_do_not_count_as_measured_speed(monkeypatch):
    recipe = load_recipe("tiny")
    run = progress.RunProgress(recipe, stages_of(recipe))
    run.begin(0)
    run.end(0, ran=False)  # done in an earlier invocation: took no time now
    run.begin(1)
    assert run.speed() == 1.0
