"""Decontamination: planted benchmark text is removed, clean text is kept, the report says why, bad input is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import phiforge

from phiforge.data.decontam import BenchmarkIndex, decontaminate, load_benchmark, read_rows
from phiforge.errors import UserError

CLEAN = [
    "The river froze early that winter, and the ferry stopped running until the thaw in March.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Shopping list: eggs, flour, two lemons, a bag of rice and some fresh basil for the sauce.",
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(tmp_path: Path, docs: list[str], against: list[str], **kw) -> tuple[list[dict], dict]:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(docs)])
    out = tmp_path / "out.jsonl"
    report = decontaminate(src, against, out, **kw)
    return [json.loads(line) for line in out.read_text().splitlines()], report


def test_planted_humaneval_prompt_is_removed_and_reported(tmp_path):
    humaneval = load_benchmark("humaneval")
    item = humaneval.items[12]
    # A chunk of the prompt with its formatting changed: upper case, whitespace collapsed.
    leaked = " ".join(item["prompt"].split()[5:40]).upper()
    docs = [*CLEAN, f"Some forum post. {leaked} Thanks in advance!"]
    kept, report = run(tmp_path, docs, ["humaneval"])
    assert [r["text"] for r in kept] == CLEAN
    assert report["documents"] == 4 and report["removed"] == 1 and report["kept"] == 3
    bench = report["benchmarks"]["humaneval"]
    assert bench["items"] == 164 and bench["items_hit"] == 1
    assert bench["hits"] == {item["task_id"]: [3]}
    (removed,) = report["removed_documents"]
    assert removed["doc"] == 3 and removed["id"] == "doc-3"
    assert removed["matches"] == [{"benchmark": "humaneval", "item": item["task_id"]}]
    # The matched n-gram is shown normalised: 13 lowercase words of the leak, punctuation gone.
    assert len(removed["ngram"].split()) == 13 and removed["ngram"] in " ".join(re.findall(r"[a-z0-9]+", leaked.lower()))


def test_short_item_caught_by_7_grams_only_when_whole_window_present(tmp_path):
    bench = write_jsonl(tmp_path / "quiz.jsonl", [{"q": "Which planet has the most moons today?", "a": "Saturn"}])
    docs = [
        *CLEAN,
        "Trivia night! which planet has the most moons today? Answers below.",  # 7 words: caught
        "Which planet has the most rings, and who named them?",  # 5 shared words: kept
    ]
    kept, report = run(tmp_path, docs, [str(bench)])
    assert [r["id"] for r in kept] == ["doc-0", "doc-1", "doc-2", "doc-4"]
    assert report["benchmarks"]["quiz"]["hits"] == {"0": [3]}
    assert report["short_ngram"] == 7
    # With short n-grams switched off (short_n = n) the 7-word question cannot be matched at all.
    kept, report = run(tmp_path, docs, [str(bench)], short_n=13)
    assert len(kept) == len(docs) and report["benchmarks"]["quiz"]["indexed_items"] == 0


def test_question_leaked_without_its_answer_is_caught(tmp_path):
    question = (
        "A train leaves the station at nine in the morning travelling east at sixty miles per hour while a "
        "second train leaves two hours later. When does the second train catch up with the first one?"
    )
    bench = write_jsonl(tmp_path / "trains.jsonl", [{"id": "t1", "question": question, "answer": "At 5 pm, after 8 hours."}])
    docs = [*CLEAN, "Homework help please: " + question.split(". ")[1] + " " + question.split(". ")[0]]
    kept, report = run(tmp_path, docs, [str(bench)])
    assert len(kept) == 3
    assert report["benchmarks"]["trains"]["hits"] == {"t1": [3]}


def test_numbers_are_not_folded(tmp_path):
    """Doctest lists with other numbers are different text; the same numbers are a leak."""
    tests = "assert candidate([1, 2, 3, 4, 5, 6], 3) == [4, 5, 6] and candidate([9, 8, 7, 6, 5, 4], 2) == [7, 6]"
    bench = write_jsonl(tmp_path / "lists.jsonl", [{"id": "x", "test": tests}])
    other_numbers = tests.translate(str.maketrans("123456789", "975318642"))
    kept, report = run(tmp_path, [*CLEAN, other_numbers, "copied: " + tests], [str(bench)])
    assert [r["id"] for r in kept] == ["doc-0", "doc-1", "doc-2", "doc-3"]
    assert report["benchmarks"]["lists"]["hits"] == {"x": [4]}


def test_minus_sign_stays_with_its_number(tmp_path):
    steps = "Subtract 16 from both sides: 6x = -36. Divide both sides by 6: x = -6."
    bench = write_jsonl(tmp_path / "algebra.jsonl", [{"id": "neg", "steps": steps}])
    positive = "Subtract 16 from both sides: 6x = 36. Divide both sides by 6: x = 6."
    kept, report = run(tmp_path, [*CLEAN, positive, "Worked example. " + steps], [str(bench)])
    assert [r["id"] for r in kept] == ["doc-0", "doc-1", "doc-2", "doc-3"]
    assert report["benchmarks"]["algebra"]["hits"] == {"neg": [4]}


def test_match_does_not_depend_on_batch_neighbours():
    humaneval = load_benchmark("humaneval")
    index = BenchmarkIndex([humaneval])
    leak = "intro " + humaneval.items[40]["canonical_solution"] + " outro"
    # Alone, and after documents of other lengths and scripts (byte offsets and positions shift).
    assert [h.doc for h in index.match([leak])] == [0]
    assert [h.doc for h in index.match(["naïve café — “quoted” ÉTÉ", *CLEAN, leak, *CLEAN])] == [4]
    # Two halves of an n-gram in neighbouring documents do not make a match.
    words = leak.split()
    assert index.match([" ".join(words[:8]), " ".join(words[8:16])]) == []


def test_cli_writes_output_and_report(tmp_path):
    humaneval = load_benchmark("humaneval")
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"content": CLEAN[0]}, {"content": humaneval.items[0]["test"]}, {"content": CLEAN[1]}],
    )
    out, rep = tmp_path / "clean.jsonl", tmp_path / "report.json"
    proc = phiforge("decontaminate", src, "--against", "humaneval", "--out", out, "--report", rep, "--field", "content")
    assert "1 of 3 documents removed" in proc.stdout
    assert [json.loads(x)["content"] for x in out.read_text().splitlines()] == [CLEAN[0], CLEAN[1]]
    report = json.loads(rep.read_text())
    # HumanEval/0's tests share 13-grams with HumanEval/20's (same lists of floats): both are reported.
    assert report["benchmarks"]["humaneval"]["hits"]["HumanEval/0"] == [1]
    assert report["removed_documents"][0]["doc"] == 1


def test_parquet_in_and_out(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    leak = load_benchmark("humaneval").items[3]["prompt"]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [*CLEAN, leak], "n": [0, 1, 2, 3]}), src)
    out = tmp_path / "out.parquet"
    report = decontaminate(src, ["humaneval"], out)
    assert report["removed"] == 1
    assert pq.read_table(out).to_pylist() == [{"text": t, "n": i} for i, t in enumerate(CLEAN)]


def test_corrupt_line_is_one_line_error_and_no_output(tmp_path):
    # 3 MB of good documents first, so a batch has gone to the (temporary) output when line 1002 fails.
    good = "".join(json.dumps({"text": f"{i} {CLEAN[i % 3]} " * 30}) + "\n" for i in range(1000))
    src = tmp_path / "in.jsonl"
    src.write_text(good + json.dumps({"text": CLEAN[0]}) + "\n" + '{"text": "cut off\n' + json.dumps({"text": CLEAN[1]}) + "\n")
    out = tmp_path / "out.jsonl"
    proc = phiforge("decontaminate", src, "--against", "humaneval", "--out", out, "--report", tmp_path / "r.json", check=False)
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if "error" in line]
    assert error.startswith(f"error: {src}:1002: not valid JSON")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]  # no output, no report, no temp files


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "fine"}, {"body": "no text"}], "document 1 has no 'text' field"),
        ([{"text": ["a", "list"]}], r"document 0 has a non-text \(list\) 'text' field"),
    ],
)
def test_missing_or_wrong_field(tmp_path, rows, message):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(UserError, match=message):
        decontaminate(src, ["humaneval"], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_empty_input_gives_empty_output(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    report = decontaminate(src, ["humaneval"], tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert report["documents"] == 0 and report["removed"] == 0


def test_non_utf8_bytes_are_read_not_fatal(tmp_path):
    leak = load_benchmark("humaneval").items[7]["prompt"]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "caf\xe9 au lait \xff\xfe"}\n' + json.dumps({"text": leak}).encode() + b"\n")
    report = decontaminate(src, ["humaneval"], tmp_path / "out.jsonl")
    assert report["documents"] == 2 and report["removed"] == 1
    (row,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["text"].startswith("caf\ufffd au lait")  # undecodable bytes become U+FFFD


@pytest.mark.parametrize(
    "bench, message",
    [("mmlu-unknown", "not a file and not a built-in"), ("EMPTY", "has no items")],
)
def test_bad_benchmark(tmp_path, bench, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": CLEAN[0]}])
    if bench == "EMPTY":
        bench = str(tmp_path / "empty.jsonl")
        Path(bench).write_text("\n")
    with pytest.raises(UserError, match=message):
        decontaminate(src, [bench], tmp_path / "out.jsonl")


def test_datatrove_pipeline_with_workers(tmp_path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from phiforge.data.decontam_step import DecontaminationFilter

    humaneval = load_benchmark("humaneval")
    (tmp_path / "in").mkdir()
    for shard in range(2):
        rows = [{"text": t, "id": f"{shard}-{i}"} for i, t in enumerate(CLEAN)]
        rows.append({"text": "see: " + humaneval.items[shard]["prompt"], "id": f"{shard}-leak"})
        write_jsonl(tmp_path / "in" / f"{shard}.jsonl", rows)
    LocalPipelineExecutor(
        [
            JsonlReader(str(tmp_path / "in")),
            DecontaminationFilter(["humaneval"], exclusion_writer=JsonlWriter(str(tmp_path / "removed"), compression=None)),
            JsonlWriter(str(tmp_path / "clean"), compression=None),
        ],
        tasks=2,
        workers=2,
        logging_dir=str(tmp_path / "logs"),
    ).run()
    read = lambda d: [json.loads(x) for f in sorted((tmp_path / d).glob("*.jsonl")) for x in f.read_text().splitlines()]  # noqa: E731
    assert sorted(r["id"] for r in read("clean")) == sorted(f"{s}-{i}" for s in range(2) for i in range(3))
    removed = read("removed")
    assert sorted(r["id"] for r in removed) == ["0-leak", "1-leak"]
    assert sorted(r["metadata"]["contaminated_items"][0] for r in removed) == ["humaneval/HumanEval/0", "humaneval/HumanEval/1"]


def test_corpus_stage_drops_benchmark_and_heldout_problem_leaks(tmp_path):
    from phiforge.pipeline import run_stage, stages_of
    from phiforge.recipe import load_recipe
    from phiforge.rundir import StageDir

    def corpus_run(name: str, docs: list[str]) -> Path:
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in docs])
        recipe_path = tmp_path / f"{name}.yaml"
        recipe_path.write_text(
            f"name: {name}\ncorpus:\n  sources: [{{name: web, kind: jsonl, path: {name}.jsonl}}]\n"
            "  heldout_fraction: 0\n  sft_conversations: 10\n  eval_problems: 40\n  decontaminate: [humaneval]\n"
            "pretrain: {steps: 1, mixture: {web: 1}}\n"
        )
        recipe = load_recipe(recipe_path)
        for stage in stages_of(recipe):
            if stage.name in ("corpus", "report"):
                run_stage(recipe, tmp_path / name, stage)
        return tmp_path / name

    first = corpus_run("first", CLEAN)
    problem = next(p for p in read_rows(first / "corpus" / "problems_heldout.jsonl") if len(p["steps"].split()) >= 7)
    leak = load_benchmark("humaneval").items[21]["prompt"]
    # Same seed and problem count: the second run holds out the same problems.
    second = corpus_run("second", [*CLEAN, leak, "Solution sketch: " + problem["steps"]])
    assert [r["text"] for r in read_rows(second / "corpus" / "train" / "web.jsonl")] == CLEAN
    metrics = StageDir(second, "corpus").manifest()["metrics"]
    assert metrics["sources"]["web"]["contaminated_docs_removed"] == 2
    assert metrics["decontamination"]["items_hit"] == {"humaneval": ["HumanEval/21"], "problems_heldout": [problem["key"]]}
    assert StageDir(first, "corpus").manifest()["metrics"]["decontamination"]["docs_removed"] == 0
    assert "2 documents removed; benchmark items hit: 1 of humaneval, 1 of problems_heldout" in (second / "report.md").read_text()
