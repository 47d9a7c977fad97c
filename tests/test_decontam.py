"""Decontamination: planted benchmark text is removed, clean text is kept, the report says why, bad input is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import phiforge

from phiforge.data.decontam import BenchmarkIndex, Overlap, decontaminate, load_benchmark
from phiforge.errors import UserError
from phiforge.files import read_rows

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
    assert [(m["benchmark"], m["item"], m["rule"], m["field"]) for m in removed["matches"]] == [
        ("humaneval", item["task_id"], "ngram", "prompt")
    ]
    assert 0.3 < removed["matches"][0]["coverage"] < 1  # 35 of the prompt's words, less its uninformative ones
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
    # With short n-grams switched off (short_n = n) the 7-word question cannot be matched: that is an error,
    # not a run that silently removes nothing (issue 15), on the command line too.
    with pytest.raises(UserError, match="benchmark 'quiz': no item has a text field of 13\\+ words"):
        run(tmp_path, docs, [str(bench)], short_n=13)
    proc = phiforge("decontaminate", tmp_path / "in.jsonl", "--against", bench, "--short-n", "13", "--out",
                    tmp_path / "o.jsonl", "--report", tmp_path / "r.json", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()][-1].startswith("error: benchmark 'quiz': no item")


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


UNINFORMATIVE = {
    "number run": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
    "zeros": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
    "primes": "2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47",
    "keywords only": "for x in range(len(y)): if not x: return None else: pass; while True: break",
    "stop words only": "it is not the one that you have to be in for this, and then if there is one of them",
}


@pytest.mark.parametrize("kind", UNINFORMATIVE)
def test_ngrams_without_information_do_not_remove(tmp_path, kind):
    """The benchmark item holds the run, and so does a clean document: only the item's own words may match."""
    question = "Compute the Zorblax checksum of the following glimmerstone sequence carefully:"
    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "z", "question": f"{question} {UNINFORMATIVE[kind]}"}])
    clean = f"Notes from the lab. {UNINFORMATIVE[kind]} That is all."
    kept, report = run(tmp_path, [clean, f"{question} {UNINFORMATIVE[kind]}"], [str(bench)])
    assert [r["id"] for r in kept] == ["doc-0"]
    assert report["benchmarks"]["b"]["ignored_ngrams"]["without an informative word"] > 0


def test_frequent_idioms_of_ordinary_code_do_not_remove(tmp_path):
    """A short field that is a common line of Python (it is in this machine's standard library) matches nothing."""
    idiom = "def __init__(self, *args, **kwargs): super().__init__(*args, **kwargs)"  # 9 words: 7-grams
    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "i", "solution": idiom, "question": "Write a Frobnicator class that wraps the quuxification engine."}])
    kept, report = run(tmp_path, [f"class Tool(Base):\n    {idiom}\n"], [str(bench)])
    assert len(kept) == 1
    assert report["benchmarks"]["b"]["ignored_ngrams"]["idioms of ordinary text"] == 3


def test_humaneval_idioms_and_number_runs_do_not_remove():
    """The clean documents the issue found removed: number runs of HumanEval tests and short-solution idioms."""
    index = BenchmarkIndex([load_benchmark("humaneval")])
    clean = [
        "table = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]",
        "grid = [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]",
        "PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)",
        "def fmt(values):\n    return ', '.join(str(x) for x in values)\n",
        "dot = sum(x * y for x, y in zip(a, b))",
    ]
    assert index.match(clean) == []


LEAKS = {
    "verbatim": lambda text: text,
    "re-cased": str.upper,
    "re-spaced": lambda text: "  \n\t ".join(text.split()),
    "embedded": lambda text: "I found this on a forum and it helped a lot:\n" + text + "\nHope it helps someone else.",
}


@pytest.mark.parametrize("form", LEAKS)
def test_every_humaneval_prompt_and_informative_solution_leak_is_removed(form):
    humaneval = load_benchmark("humaneval")
    index = BenchmarkIndex([humaneval])
    prompts = [LEAKS[form](item["prompt"]) for item in humaneval.items]
    assert [h.doc for h in index.match(prompts)] == list(range(164))
    # Solution alone: every solution with a line that says something specific to its task is caught.
    solutions = {i: item["canonical_solution"] for i, item in enumerate(humaneval.items) if i in (7, 10, 25, 95, 129, 160)}
    hits = index.match([LEAKS[form](s) for s in solutions.values()])
    assert [(h.doc, h.matches[0].field) for h in hits] == [(j, "canonical_solution") for j in range(len(solutions))]


def solution_fields(index: BenchmarkIndex) -> list[int]:
    """The field id of each HumanEval item's canonical_solution, in item order."""
    return [f for f, name in enumerate(index.field_names) if name == "canonical_solution"]


@pytest.mark.parametrize("form", LEAKS)
def test_generic_solution_leaked_alone_is_caught_by_the_copy_rule(form):
    """Solutions without an informative n-gram (`while b: a, b = b, a % b`) or short are caught as whole copies."""
    humaneval = load_benchmark("humaneval")
    index = BenchmarkIndex([humaneval])
    solutions = [LEAKS[form](item["canonical_solution"]) for item in humaneval.items]
    copyable = [i for i, f in enumerate(solution_fields(index)) if index.copyable[f]]
    assert len(copyable) == 37
    hits = {h.doc: h for h in index.match(solutions)}
    for i in copyable:
        (match,) = [m for m in hits[i].matches if m.item == humaneval.ids[i]]
        assert match.rule == "copy" and match.field == "canonical_solution" and match.coverage == 1
    # Informative n-grams alone catch 122; what neither rule catches is under 7 words, so never indexed.
    assert len({h.doc for h in BenchmarkIndex([humaneval], copy_fraction=None).match(solutions)}) == 122
    missed = [humaneval.items[i]["canonical_solution"] for i in range(164) if i not in hits]
    assert len(hits) == 151 and all(len(re.findall(r"[a-z0-9]+", m.lower())) < 7 for m in missed)


def test_generic_code_in_clean_documents_is_not_removed(tmp_path):
    """A generic solution is caught only as a copy of most of it; part of one, or one ordinary code holds, is kept."""
    solution = (
        "for i in range(len(a)):\n    for j in range(i + 1, len(a)):\n        if a[j] < a[i]:\n"
        "            a[i], a[j] = a[j], a[i]\n    return a\n"
    )
    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "s", "question": "Sort the quibbleworth ledger in place.", "solution": solution}])
    part = "\n".join(solution.splitlines()[:2])  # the two loop lines: 14 of its 29 words
    docs = ["def f(a):\n    " + part + "\n        pass\n", "def sort(a):\n" + solution]
    kept, report = run(tmp_path, docs, [str(bench)])
    assert [r["id"] for r in kept] == ["doc-0"]
    (match,) = report["removed_documents"][0]["matches"]
    assert (match["rule"], match["field"], match["coverage"]) == ("copy", "solution", 1.0)
    assert report["benchmarks"]["b"]["copy_rule"]["fields"] == {"indexed": 1, "held_by_background": 0}


def test_number_fields_have_no_copy_rule(tmp_path):
    run_of_numbers = " ".join(str(i) for i in range(1, 17))
    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "n", "question": "List the glimmerstone indices of the northern vault.", "answer": run_of_numbers}])
    kept, report = run(tmp_path, [f"table = [{run_of_numbers}]"], [str(bench)])
    assert len(kept) == 1
    index = BenchmarkIndex([load_benchmark(bench)])
    assert dict(zip(index.field_names, index.copyable.tolist())) == {"id": False, "question": True, "answer": False}


def test_overlap_rule_fires_above_its_fraction_and_reports_coverage(tmp_path):
    words = ("The orchard keeper planted forty pear saplings along the northern ridge and watered them every "
             "second evening until the frost came. How many saplings survived the winter if nine froze?").split()
    bench = write_jsonl(tmp_path / "orchard.jsonl", [{"id": "o1", "question": " ".join(words)}])
    half = len(words) // 2
    docs = [
        "Story time: " + " ".join(words[: half + 4]) + " And that was it.",  # more than half of the question
        "Story time: " + " ".join(words[:14]) + " And that was it.",  # a 13-gram, but under half
    ]
    kept, report = run(tmp_path, docs, [], overlap_against=[str(bench)])
    assert [r["id"] for r in kept] == ["doc-1"]
    (match,) = report["removed_documents"][0]["matches"]
    assert match["rule"] == "overlap" and match["n"] == 8 and match["field"] == "question"
    assert match["coverage"] == round((half + 4) / len(words), 3)
    assert report["benchmarks"]["orchard"]["rule"] == "overlap" and report["benchmarks"]["orchard"]["fraction"] == 0.5
    # The default rule removes both; on the command line the rule is chosen per benchmark.
    assert len(run(tmp_path, docs, [str(bench)])[0]) == 0
    src, out, rep = tmp_path / "in.jsonl", tmp_path / "cli.jsonl", tmp_path / "cli.json"
    phiforge("decontaminate", src, "--overlap", bench, "--overlap-fraction", "0.9", "--out", out, "--report", rep)
    assert json.loads(rep.read_text())["removed"] == 0


def test_recipe_entry_selects_the_overlap_rule(tmp_path):
    from phiforge.data.corpus import decontamination_index
    from phiforge.recipe import CorpusConfig

    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "q", "question": "Explain why the Moon keeps one face turned to the Earth at all times."}])
    cfg = CorpusConfig.model_validate({
        "sources": [{"name": "web", "kind": "passkey"}],
        "decontaminate": ["humaneval", {"benchmark": str(bench), "rule": "overlap", "n": 5, "fraction": 0.3}],
    })
    index = decontamination_index(cfg.decontaminate, [{"key": "p", "question": "Nine plus four apples equals how many apples altogether?"}])
    assert [(b.name, b.overlap) for b in index.benchmarks[:2]] == [("humaneval", None), ("b", Overlap(5, 0.3))]
    (hit,) = index.match(["Homework: explain why the Moon keeps one face turned, please."])
    assert hit.matches[0].rule == "overlap" and hit.matches[0].n == 5


def test_match_does_not_depend_on_batch_neighbours():
    humaneval = load_benchmark("humaneval")
    index = BenchmarkIndex([humaneval])
    leak = "intro " + humaneval.items[129]["canonical_solution"] + " outro"
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
