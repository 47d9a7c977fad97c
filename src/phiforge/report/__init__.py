"""Report stage: report.md with loss curves and evaluation tables, and where the final model is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phiforge.files import write_text, write_with  # noqa: E402
from phiforge.rundir import FINAL_DIR, StageDir, StageResult, read_metrics  # noqa: E402
from phiforge.stage import Stage, StageContext  # noqa: E402


def plot_losses(run_dir: Path, stage: str, path: Path) -> None:
    rows = read_metrics(run_dir / stage / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    ax.plot(steps, losses, label="train", lw=0.6, alpha=0.45)
    window = max(1, len(rows) // 30)
    if window > 1:  # batches from different sources differ a lot; the running mean shows the trend
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"train (mean of {window})", lw=1.5)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="held-out (all sources)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{stage} loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def plot_by_length(results: dict, task: str, metric: str, ylabel: str, path: Path) -> None:
    """One line per model: `task`'s `metric@LENGTH` values against context length."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    all_lengths: set[int] = set()
    for name, res in results.items():
        scores = res.get(task, {})
        lengths = sorted(int(k.split("@")[1]) for k in scores if k.startswith(f"{metric}@"))
        if lengths:
            ax.plot(lengths, [scores[f"{metric}@{n}"] for n in lengths], "o-", label=name)
            all_lengths.update(lengths)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_lengths), [str(n) for n in sorted(all_lengths)])
    ax.minorticks_off()
    ax.set(xlabel="context (tokens)", ylabel=ylabel, title=task.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def plot_suite_long_context(by_model: dict[str, dict], label: str, path: Path) -> None:
    """A suite long_context task's accuracy against context length: a panel per kind (passkey, multikey, variable
    tracking), a line per checkpoint with its 95% interval as a band."""
    kinds = next(res["tasks"][label]["settings"]["kinds"] for res in by_model.values() if label in res["tasks"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.5), sharey=True, squeeze=False)
    lengths_seen: set[int] = set()
    for ax, kind in zip(axes[0], kinds):
        for name, res in by_model.items():
            scores = res["tasks"].get(label, {}).get("scores", {})
            lengths = sorted(int(k.split("@")[1]) for k in scores if k.startswith(f"{kind}@"))
            if not lengths:
                continue
            got = [scores[f"{kind}@{n}"] for n in lengths]
            line, = ax.plot(lengths, [s["value"] for s in got], "o-", label=name)
            ax.fill_between(lengths, [s["ci95"][0] for s in got], [s["ci95"][1] for s in got],
                            color=line.get_color(), alpha=0.12)
            lengths_seen.update(lengths)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="prompt length (tokens)", title=kind.replace("_", " "), ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.set_xticks(sorted(lengths_seen), [str(n) for n in sorted(lengths_seen)])
        ax.minorticks_off()
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{label}: accuracy vs context length (bands: 95% intervals)", fontsize=10)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


TASK_TITLES = {
    "perplexity": "Held-out text (loss in nats/token; the unigram loss is the floor a unigram model of the same text reaches)",
    "problems": "Held-out verified problems (greedy accuracy; solution_loss is the loss of the worked reference answer)",
    "long_context": "Long context (held-out loss on the far half of windows of each length)",
    "passkey": "Passkey retrieval (accuracy at each context length)",
    "chat_format": "Chat format (replies that end with the stop token and open no new turn)",
    "instructions": "Instruction following (IFEval-style: replies that meet the prompt's verifiable format constraint, "
                    "with a Wilson 95% interval)",
}


def eval_tables(results: dict) -> list[str]:
    """One table per task: a row per model, a column per metric, and the sample count."""
    tasks: list[str] = []
    for res in results.values():
        tasks += [t for t in res if t not in tasks]
    lines: list[str] = []
    for task in tasks:
        metrics = [k for k in next(r[task] for r in results.values() if task in r) if k != "n"]
        lines += [f"**{TASK_TITLES.get(task, task)}**", "", "| model | " + " | ".join(metrics) + " | n |",
                  "|---" * (len(metrics) + 2) + "|"]
        for name, res in results.items():
            if task in res:
                row = [_fmt(res[task].get(k, "")) for k in metrics]
                lines.append(f"| {name} | " + " | ".join(row) + f" | {res[task].get('n', '')} |")
        lines.append("")
    return lines


def posttrain_lines(manifests: dict) -> list[str]:
    """PTS's search figures and pivot plot; DPO's pairs, margins and held-out before/after comparison; the judge's
    grades and pairs of DPO round 2; the hallucination stage's data and SimpleQA rates before and after."""
    lines: list[str] = []
    if "pts" in manifests:
        m = manifests["pts"]["metrics"]
        lines += ["", f"Pivotal Token Search on `{m['init_from']}`:", "",
                  "| problems | questions kept (searched) | pivots | pairs | samples spent |", "|---|---|---|---|---|",
                  f"| {m['problems']} | {m['searched']} | {m['pivots']} | {m['pairs']} | {m['samples']:,} |", "",
                  "![pivot positions](pts/pairs.pivots.png)"]
    if "dpo" in manifests:
        m = manifests["dpo"]["metrics"]
        lines += ["", dpo_line("DPO", m)]
        if h := m.get("heldout"):
            mc = h["mcnemar"]
            lines += ["", "Held-out problems (greedy, same problems for both models; 95% Wilson intervals):", "",
                      "| model | correct | accuracy | 95% CI |", "|---|---|---|---|"]
            for name, row in (("before (init)", h["before"]), ("after DPO", h["after"])):
                lines.append(f"| {name} | {row['correct']}/{row['n']} | {row['accuracy']:.3f} | "
                             f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f} |")
            lines += ["", f"McNemar exact test: {mc['improved']} problems improved, {mc['regressed']} regressed, "
                      f"p = {mc['p_value']:.3g}" + (" (significant at 0.05)." if mc["p_value"] < 0.05 else " (not significant at 0.05).")]
    if "judge_dpo" in manifests:
        m = manifests["judge_dpo"]["metrics"]
        j = m["judging"]
        score = j["score"]
        scale = f"mean {score['mean']:.2f} (min {score['min']:.2f}, max {score['max']:.2f})" if score else "none readable"
        lines += ["", "### DPO round 2: judge-guided pairs", "",
                  f"`{m['init_from']}` answered {j['prompts']} prompts {j['responses'] // max(j['prompts'], 1)} times each; "
                  f"{j['judge']} graded every answer for accuracy, style and detail (0-10).", "",
                  "| prompts | answers | unparseable grades | scores | prompts without a pair | pairs kept | mean gap |",
                  "|---|---|---|---|---|---|---|",
                  f"| {j['prompts']} | {j['responses']} | {j['unparseable']} | {scale} | {j['no_pair']} | {j['pairs']} | "
                  f"{_fmt(j['gap_mean']) if j['gap_mean'] is not None else '-'} |", "", dpo_line("DPO round 2", m)]
    if "hallucination" in manifests:
        m = manifests["hallucination"]["metrics"]
        d = m["data"]
        lines += ["", "### Hallucination mitigation", "",
                  f"`{m['init_from']}` answered {d['questions']} questions with known answers and {d['bogus_questions']} "
                  f"about made-up entities (graded by {d['grader']}): SFT targets {_counts(d['sft'])}; "
                  f"pairs {_counts(d['pairs'])}.", ""]
        if t := m.get("sft"):
            lines += [f"SFT on {t['conversations']} of those targets first: loss {_fmt(t['final_loss'])}, held-out "
                      f"loss {_fmt(t['val_loss'])}.", ""]
        lines += [dpo_line("DPO", m), "",
                  "SimpleQA grades of greedy answers to held-out questions (bogus: other made-up entities than the "
                  "training ones; a blank reply counts as not attempted, and its share of all replies is shown apart):",
                  "", "| model | correct | incorrect | not attempted | correct given attempted | F | bogus declined | "
                  "blank replies |", "|---|---|---|---|---|---|---|---|"]
        for name, r in (("before", m["rates"]["before"]), ("after", m["rates"].get("after"))):
            if r is not None:
                lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k, "-")) for k in (
                    "correct", "incorrect", "not_attempted", "correct_given_attempted", "f_score", "bogus_refusal", "empty")) + " |")
        if paired := m["rates"].get("paired"):
            w, c = paired["not_wrong"], paired["correct"]
            lines += ["", f"Paired on the same questions (McNemar's exact test; `heldout_grades.jsonl` has both answers): "
                      f"answers not wrong (right, or declined) {w['improved']} improved, {w['regressed']} regressed, "
                      f"p = {w['p_value']:.3g}; right answers to facts {c['improved']} gained, {c['regressed']} lost, "
                      f"p = {c['p_value']:.3g}."]
    return ["", "## Post-training", *lines] if lines else []


def dpo_line(what: str, m: dict) -> str:
    """One DPO stage's pairs, steps and margins, or why it trained nothing."""
    if m.get("skipped"):
        return f"{what} skipped: {m['skipped']}; the model is unchanged."
    return (f"{what} on {m['pairs']} pairs, {m['steps']} steps: log p(chosen) - log p(rejected) "
            f"{m['margin_before']:+.3f} -> {m['margin_after']:+.3f}; chosen preferred on "
            f"{m['preferred_before']:.0%} -> {m['preferred_after']:.0%} of pairs.")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()) or "none"


def curation_section(cur: dict) -> list[str]:
    """Documents left after each curation step, the classifier's held-out precision/recall and its score plot."""
    left = sum(cur["read"].values())
    lines = ["### Curation", "", "| step | removed | left |", "|---|---|---|", f"| read ({', '.join(cur['read'])}) | | {left} |"]
    for step in cur["steps"]:
        left -= step["removed"]
        lines.append(f"| {step['step']} | {step['removed']} | {left} |")
    lines += ["", "Kept per source: " + ", ".join(f"{n} {cur['kept'][n]} of {cur['read'].get(n, '?')}" for n in cur["kept"])
              + f"; {cur['bad_input']} bad input records."]
    if c := cur.get("classifier"):
        def pct(v) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        lines += ["", f"Quality classifier: {c['labelled']} documents labelled by {c['labeler']} in {c.get('label_seconds')} s "
                  f"({c['unparseable']} without a score; label quartiles {c.get('label_quartiles')}, high from "
                  f"{c.get('label_cut')}: {pct(c.get('label_positive_rate'))}), trained on {c['train_labels']}; "
                  f"on {c['heldout_labels']} held-out labels precision "
                  f"{pct(c.get('precision'))} and recall {pct(c.get('recall'))} (keeping everything: precision "
                  f"{pct(c.get('heldout_positive_rate'))}); {c['kept']} of {c['scored']} documents scored at least "
                  f"{c['threshold']}.", "", "![quality scores](corpus/curation/quality_scores.png)"]
    return lines


def ablation_lines(ctx: StageContext) -> list[str]:
    """The ablation stage's variants: what each trained on, the table of scores with 95% intervals, and the figure."""
    cfg, pre = ctx.recipe.ablation, ctx.recipe.pretrain
    results = json.loads(ctx.input("ablation", "results").read_text())
    lines = ["", "## Ablation: mixture variants", "",
             f"The same model (`{ctx.recipe.model.preset}`, seed {ctx.recipe.seed}) pretrained on each mixture for "
             f"{pre.steps} steps of {pre.batch_size * pre.grad_accum} x {pre.seq_len} tokens, then suite "
             f"`{cfg.suite}` and held-out loss on organic (corpus) and synthetic (synth) text. Each score is value "
             "[95% CI] and its n (Wilson intervals for shares, bootstrap over rows for losses).", "",
             "| variant | mixture (share of tokens drawn) |", "|---|---|"]
    for name, res in results.items():
        mix = ", ".join(f"{source} {d['share']:.2f}" for source, d in res["mixture"].items())
        lines.append(f"| {name} | {mix} |")
    lines += ["", *ctx.input("ablation", "table").read_text().splitlines(), "", "![ablation](ablation/ablation.png)"]
    return lines


def machine_line(ctx: StageContext) -> str:
    """What the wall times and training speed depend on: the CPU's instruction set and the training precision."""
    import os

    import torch

    from phiforge.train.loop import bf16_supported, pick_device

    device = pick_device()
    bf16 = bf16_supported(device)
    trained = [s.section_of(ctx.recipe) for s in ctx.stages if s.all_ranks and s.section_of(ctx.recipe) is not None]
    asked = trained[0].precision if trained else "auto"
    used = "bf16 autocast" if asked == "bf16" or (asked == "auto" and bf16) else "fp32"
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return (f"Machine: {where}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
            f"{'yes' if bf16 else 'no'}, {torch.get_num_threads()} threads; training precision `{asked}`: {used}.")


def run(ctx: StageContext) -> StageResult:
    run_dir = ctx.run_dir
    lines = [f"# phiforge run report: {ctx.recipe.name}", "", f"Run directory `{run_dir}`, written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    lines += [machine_line(ctx), ""]
    lines += ["## Stages", "", "| stage | status | wall time (s) | key figures |", "|---|---|---|---|"]
    manifests = {}
    for declared in ctx.before():  # every stage but this one
        stage, sd = declared.name, StageDir(run_dir, declared.name)
        if sd.status() == "pending" and declared.section_of(ctx.recipe) is None:
            continue  # not part of this recipe (a post-training-only recipe has no tokenizer or eval stage)
        if sd.status() != "done":
            lines.append(f"| {stage} | {sd.status()} | | |")
            continue
        m = manifests[stage] = sd.manifest()
        keys = ("final_loss", "val_loss", "unigram_val_loss", "tokens", "tokens_per_s", "context", "vocab_size", "pairs")
        figures = ", ".join(f"{k} {_fmt(m['metrics'][k])}" for k in keys if m["metrics"].get(k) is not None)
        lines.append(f"| {stage} | done | {m['wall_time_s']} | {figures} |")

    if "pretrain" in manifests:
        pm = manifests["pretrain"]["metrics"]
        if pm.get("val_loss") is not None:
            lines += ["", f"Pretraining held-out loss {pm['val_loss']:.3f} nats/token against {pm['unigram_val_loss']:.3f} "
                      "for a unigram model of the training tokens."]
    if "corpus" in manifests:
        lines += ["", "## Corpus", "", "| source | kind | docs | held-out docs | chars |", "|---|---|---|---|---|"]
        for name, s in manifests["corpus"]["metrics"]["sources"].items():
            lines.append(f"| {name} | {s['kind']} | {s['docs']} | {s['heldout_docs']} | {s['chars']:,} |")
        if dec := manifests["corpus"]["metrics"].get("decontamination"):
            hit = ", ".join(f"{len(items)} of {b}" for b, items in dec["items_hit"].items())
            lines += ["", f"Decontamination ({dec['ngram']}-grams, {dec['short_ngram']}-grams for short fields): "
                      f"{dec['docs_removed']} documents removed; benchmark items hit: {hit}."]
    if "corpus" in manifests and (cur := manifests["corpus"]["metrics"].get("curation")):
        lines += ["", *curation_section(cur)]
    if "synth" in manifests:
        sm = manifests["synth"]["metrics"]
        lines += ["", "## Synthetic data", "", f"Teacher: {sm['teacher'] or 'none (programmatic generators only)'}; "
                  f"{sm['seeds']} seeds; {sm['sft_conversations']} SFT conversations. Inspect any sample's lineage with "
                  "`phiforge synth inspect <run>/synth/datasets/<name>/shard_00000.jsonl`.", "",
                  "| dataset | type | made | kept | dropped (by step) | docs | chars |", "|---|---|---|---|---|---|---|"]
        for name, d in sm["datasets"].items():
            dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items()) or "-"
            if d.get("contaminated_removed"):
                dropped += f"; {d['contaminated_removed']} as benchmark contamination"
            lines.append(f"| {name} | {d['type']} | {d['made']} | {d['kept']} | {dropped} | {d['docs']} | {d['chars']:,} |")
        if dec := sm.get("decontamination"):
            hit = ", ".join(f"{len(items)} of {b}" for b, items in dec["items_hit"].items())
            lines += ["", f"Synthetic data decontamination: {dec['docs_removed']} samples removed; benchmark items hit: {hit}."]
    for stage in ("pretrain", "midtrain"):
        if stage in manifests:
            lines += ["", f"### {stage} mixture", "", "| source | share | tokens drawn | unique tokens | epochs |", "|---|---|---|---|---|"]
            for name, d in manifests[stage]["metrics"]["mixture"].items():
                lines.append(f"| {name} | {d['share']:.2f} | {d['tokens']:,} | {d['unique_tokens']:,} | {d['epochs']} |")

    lines += posttrain_lines(manifests)
    if "ablation" in manifests:
        lines += ablation_lines(ctx)
    plots = ctx.out / "plots"
    trained = list(ctx.trained_models())
    if trained:
        lines += ["", "## Training loss", ""]
        for stage in trained:
            plot_losses(run_dir, stage, plots / f"loss_{stage}.png")
            lines.append(f"![{stage} loss](report/plots/loss_{stage}.png)")
    if "eval" in manifests:
        results = json.loads(ctx.input("eval", "results").read_text())
        lines += ["", "## Evaluation", "", *eval_tables(results)]
        for task, metric, ylabel in (("long_context", "loss", "held-out loss, far half of window"),
                                     ("passkey", "acc", "passkey accuracy")):
            if any(task in r for r in results.values()):
                plot_by_length(results, task, metric, ylabel, plots / f"{task}.png")
                lines += ["", f"![{task}](report/plots/{task}.png)"]
        suite = ctx.input("eval", "suite")
        if suite.is_file():  # the recipe's eval.suite: a row per checkpoint, each score with its 95% interval and n
            from phiforge.eval.suite import checkpoint_table

            by_model = json.loads(suite.read_text())
            lines += ["", f"**Suite `{ctx.recipe.eval.suite}`** (value [95% CI] n; each item with its verdict and reason "
                      "in eval/suite/MODEL/results.jsonl)", "", *checkpoint_table(by_model)]
            long_tasks = {label for res in by_model.values() for label, t in res["tasks"].items()
                          if t["task"] == "long_context"}
            for label in sorted(long_tasks):  # what midtraining's longer context must buy, checkpoint by checkpoint
                plot_suite_long_context(by_model, label, plots / f"suite_{label}.png")
                lines += ["", f"![suite {label}](report/plots/suite_{label}.png)"]

    if trained:  # the pipeline copies it there once this last stage has run
        lines += ["", "## Final model", "", f"`{run_dir / FINAL_DIR}` is the {trained[-1]} model; load it with",
                  "`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`."]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return StageResult()


STAGE = Stage("report", "Write report.md and plots from the run's finished stages (the pipeline then copies final/).",
              run, "eval", outputs={"report": "../report.md", "plots": "plots/"},
              hash_skips=("ablation",))  # run directories from before the ablation stage keep their reports
