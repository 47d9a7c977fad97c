"""Organic data curation: every reader, language routing, dedup, the LLM-labelled classifier and bad input."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import phiforge
from phiforge.data.curation import curate
from phiforge.data.curation.classifier import parse_score
from phiforge.errors import UserError
from phiforge.generation.fake import FakeBackend
from phiforge.recipe import load_curation

NOUNS = ("river garden market teacher village engine window letter council harvest bridge library season museum "
         "kitchen forest doctor student planet signal farmer painter island mountain harbor journal lantern orchard "
         "workshop station").split()
VERBS = ("finds builds opens carries follows changes describes visits measures explains records watches repairs "
         "paints collects shares protects borrows notices prepares").split()
ADJS = "old quiet bright small famous careful distant simple busy local green heavy narrow gentle early patient".split()
ADVS = "slowly often rarely quickly carefully early later again together nearly".split()
TEMPLATES = (
    "The {a} {n} of the {m} {v} a {b} {o}.",
    "Every {n} {adv} {v} the {m} near the {o}.",
    "In the {a} {n}, a {m} {v} what the {o} left behind.",
    "A {a} {n} and the {m} {v} {adv} before the {o} closed.",
    "Nobody expected that the {n} would {v0} the {a} {m}.",
    "When the {n} {v} the {m}, the {o} {v2} it {adv}.",
)
FRENCH = ("Le petit village se trouve au bord de la rivière et les habitants aiment se promener le soir. "
          "Les enfants jouent dans le jardin pendant que leurs parents préparent le repas pour toute la famille. ")
GERMAN = ("Das kleine Dorf liegt am Ufer des Flusses und die Bewohner gehen abends gern spazieren. "
          "Die Kinder spielen im Garten, während ihre Eltern das Essen für die ganze Familie vorbereiten. ")


def english(rng: random.Random, sentences: int = 15) -> str:
    """Varied English prose that passes the heuristic filters (no repeated lines or long repeated n-grams)."""

    def sentence() -> str:
        v = rng.choice(VERBS)
        return rng.choice(TEMPLATES).format(
            a=rng.choice(ADJS), b=rng.choice(ADJS), n=rng.choice(NOUNS), m=rng.choice(NOUNS), o=rng.choice(NOUNS),
            v=v, v0=v[:-1], v2=rng.choice(VERBS), adv=rng.choice(ADVS),
        )

    return "\n\n".join(" ".join(sentence() for _ in range(5)) for _ in range(sentences // 5))


def tiny_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose page shows `lines` (Helvetica), with a correct xref table."""
    stream = "BT /F1 10 Tf 40 750 Td 12 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def html_page(title: str, body: str) -> str:
    paragraphs = "".join(f"<p>{p}</p>" for p in body.split("\n\n"))
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/privacy'>Privacy policy</a> | <a href='/login'>Sign in</a></nav>"
            f"<article><h1>{title}</h1>{paragraphs}</article>"
            "<footer>Copyright 2024 Example Corp. All rights reserved.</footer></body></html>")


def write_warc(path: Path, pages: dict[str, str]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode()),
                                                          http_headers=headers))


def write_config(path: Path, curation: dict) -> Path:
    path.write_text(yaml.safe_dump({"curation": curation}))
    return path


def read_curated(out: Path) -> dict[str, dict]:
    docs = {}
    for f in sorted((out / "curated").rglob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            docs[doc["id"]] = doc | {"dir": f.parent.name}
    return docs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One CLI run over every input kind, with duplicates, three languages and bad records."""
    root = tmp_path_factory.mktemp("curation")
    rng = random.Random(0)
    inputs = root / "in"
    (inputs / "web").mkdir(parents=True)
    web = [{"id": f"web-{i}", "text": english(rng)} for i in range(12)]
    near = web[1]["text"].split(" ")
    near[7] = "lighthouse"
    lines = [json.dumps(r).encode() for r in web]
    lines += [
        json.dumps({"id": "dup-exact", "text": web[0]["text"]}).encode(),
        json.dumps({"id": "dup-near", "text": " ".join(near)}).encode(),
        json.dumps({"id": "fr-1", "text": FRENCH * 3}).encode(),
        json.dumps({"id": "de-1", "text": GERMAN * 3}).encode(),
        b'{"id": "broken", "text": "unterminated',  # line 17
        json.dumps({"id": "latin1", "text": "caf\u00e9 " + english(rng)}, ensure_ascii=False).encode("utf-8").replace(b"\xc3\xa9", b"\xe9"),
        json.dumps({"id": "no-text", "body": english(rng)}).encode(),  # line 19
    ]
    (inputs / "web" / "web.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (inputs / "web" / "empty.jsonl").write_bytes(b"")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["tab-0", "tab-1"], "text": [english(rng), english(rng)]}), inputs / "table.parquet")
    crawl_text = english(rng)
    write_warc(inputs / "crawl.warc.gz", {"https://example.org/a": html_page("Harbor notes", crawl_text)})
    (inputs / "notes").mkdir()
    (inputs / "notes" / "a.txt").write_text(english(rng))
    (inputs / "pages").mkdir()
    page_text = english(rng)
    (inputs / "pages" / "page.html").write_text(html_page("Orchard diary", page_text))
    (inputs / "papers").mkdir()
    pdf_lines = [s.strip() + "." for s in english(rng).replace("\n\n", " ").split(".") if s.strip()]
    (inputs / "papers" / "good.pdf").write_bytes(tiny_pdf(pdf_lines))
    (inputs / "papers" / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    (inputs / "tex").mkdir()
    tex_text = english(rng)
    (inputs / "tex" / "paper.tex").write_text(
        "\\documentclass{article}\n\\begin{document}\n\\section{Results}\n"
        + tex_text.replace("The ", "\\textbf{The} ", 1) + "\n\\end{document}\n"
    )
    config = write_config(root / "curation.yaml", {
        "inputs": [
            {"name": "web", "kind": "jsonl", "path": "in/web"},
            {"name": "table", "kind": "parquet", "path": "in/table.parquet"},
            {"name": "crawl", "kind": "warc", "path": "in/crawl.warc.gz"},
            {"name": "notes", "kind": "text", "path": "in/notes"},
            {"name": "pages", "kind": "html", "path": "in/pages"},
            {"name": "papers", "kind": "pdf", "path": "in/papers"},
            {"name": "tex", "kind": "tex", "path": "in/tex"},
        ],
        "filters": {"keep_languages": ["en", "fr"]},
        "classifier": {"enabled": False},
        "tasks": 2,
    })
    out = root / "out"
    proc = phiforge("curate", config, "--out", out)
    stats = json.loads((out / "stats.json").read_text())
    return {"out": out, "stats": stats, "docs": read_curated(out), "web": web, "inputs": inputs, "proc": proc,
            "texts": {"crawl": crawl_text, "pages": page_text, "tex": tex_text, "pdf": pdf_lines}}


def test_every_reader_feeds_the_output(mixed):
    by_source: dict[str, list[dict]] = {}
    for doc in mixed["docs"].values():
        by_source.setdefault(doc["metadata"]["source"], []).append(doc)
    assert set(by_source) == {"web", "table", "crawl", "notes", "pages", "papers", "tex"}
    assert {d["id"] for d in by_source["table"]} == {"tab-0", "tab-1"}
    first_sentence = lambda text: text.split(".")[0]  # noqa: E731
    # HTML (from the WARC and from a file) is reduced to the article by trafilatura: no navigation, no footer
    for source in ("crawl", "pages"):
        text = by_source[source][0]["text"]
        assert first_sentence(mixed["texts"][source]) in text
        assert "Privacy policy" not in text and "All rights reserved" not in text
    pdf = by_source["papers"][0]["text"]
    assert mixed["texts"]["pdf"][0] in pdf and mixed["texts"]["pdf"][-1] in pdf
    tex = by_source["tex"][0]["text"]
    assert "\\" not in tex and all(p in tex for p in mixed["texts"]["tex"].split("\n\n"))  # markup gone, prose kept


def test_documents_carry_provenance(mixed):
    for doc in mixed["docs"].values():
        meta = doc["metadata"]
        assert meta["source"] and meta["file_path"] and meta["language"] == doc["dir"]
        assert 0 <= meta["language_score"] <= 1
        assert meta["filters_passed"][-2:] == ["exact_dedup", "minhash_dedup"]
        if meta["language"] == "en":
            assert meta["filters_passed"][:4] == ["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]


def test_languages_are_routed(mixed):
    out, stats = mixed["out"], mixed["stats"]
    assert sorted(p.name for p in (out / "curated").iterdir()) == ["en", "fr"]
    assert [d["id"] for d in mixed["docs"].values() if d["dir"] == "fr"] == ["fr-1"]
    assert "de-1" not in mixed["docs"]
    assert stats["language"]["de"] == 1 and stats["dropped"]["language"] == 1
    assert stats["output"]["fr"] == 1 and stats["output"]["en"] == sum(d["dir"] == "en" for d in mixed["docs"].values())


def test_exact_and_near_duplicates_are_removed(mixed):
    ids = set(mixed["docs"])
    assert len(ids & {"web-0", "dup-exact"}) == 1
    assert len(ids & {"web-1", "dup-near"}) == 1
    assert {f"web-{i}" for i in range(2, 12)} <= ids  # distinct documents all survive
    assert mixed["stats"]["dropped"]["exact_dedup"] == 1
    assert mixed["stats"]["dropped"]["minhash_dedup"] == 1


def test_bad_input_is_counted_with_file_and_line(mixed):
    issues = {(Path(i["file"]).name, i["line"], i["problem"].split(" (")[0]) for i in mixed["stats"]["bad_input"]["issues"]}
    assert issues == {
        ("web.jsonl", 17, "not valid JSON"),
        ("web.jsonl", 18, "not UTF-8"),
        ("web.jsonl", 19, "no text"),
        ("empty.jsonl", 0, "empty file"),
        ("broken.pdf", 0, "cannot parse as pdf"),
    }
    assert mixed["stats"]["bad_input"]["count"] == 5
    assert mixed["stats"]["inputs"]["web"] == 16  # every good line was read
    assert all(Path(i["file"]).is_file() for i in mixed["stats"]["bad_input"]["issues"])  # full paths
    assert "5 bad input records" in mixed["proc"].stdout


def test_bad_input_stop_fails_cleanly(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(json.dumps({"text": english(random.Random(1))}) + "\n{oops\n")
    config = write_config(tmp_path / "c.yaml", {"inputs": [{"name": "a", "kind": "jsonl", "path": "in"}],
                                                "classifier": {"enabled": False}, "on_bad_input": "stop"})
    proc = phiforge("curate", config, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"{tmp_path / 'in' / 'a.jsonl'}:2: not valid JSON" in error, error
    assert not (tmp_path / "out" / "stats.json").exists() and not (tmp_path / "out" / "curated").exists()


def test_rerun_reuses_finished_work_and_sees_edited_inputs(tmp_path):
    rng = random.Random(3)
    (tmp_path / "in").mkdir()
    data = tmp_path / "in" / "a.jsonl"
    data.write_text("".join(json.dumps({"id": f"a{i}", "text": english(rng)}) + "\n" for i in range(3)))
    config = load_curation(write_config(tmp_path / "c.yaml", {
        "inputs": [{"name": "a", "kind": "jsonl", "path": str(data)}],
        "dedup": {"exact": False, "minhash": False}, "classifier": {"enabled": False}}))
    out = tmp_path / "out"
    assert curate(config, out)["output"] == {"en": 3}
    assert curate(config, out)["output"] == {"en": 3}  # everything reused, output kept
    with open(data, "a") as f:
        f.write(json.dumps({"id": "a3", "text": english(rng)}) + "\n")
    assert curate(config, out)["output"] == {"en": 4}
    assert set(read_curated(out)) == {"a0", "a1", "a2", "a3"}


def test_an_output_directory_holding_the_users_own_work_is_refused_and_kept(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": english(random.Random(4))}) + "\n")
    config = load_curation(write_config(tmp_path / "c.yaml", {
        "inputs": [{"name": "a", "kind": "jsonl", "path": "a.jsonl"}],
        "dedup": {"exact": False, "minhash": False}, "classifier": {"enabled": False}}))
    out = tmp_path / "projects"
    for name in ("work", "curated"):
        (out / name).mkdir(parents=True)
        (out / name / "notes.txt").write_text("mine")
        with pytest.raises(UserError, match=f"^{out / name} was not written by a curation run and is left as it is"):
            curate(config, out)
        assert (out / name / "notes.txt").read_text() == "mine"
        (out / name).rename(tmp_path / f"moved-{name}")


def test_nothing_left_is_a_clear_error(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "Too short to keep."}) + "\n")
    config = load_curation(write_config(tmp_path / "c.yaml", {"inputs": [{"name": "a", "kind": "jsonl", "path": "a.jsonl"}]}))
    with pytest.raises(UserError, match="no documents left after 00_read_a"):
        curate(config, tmp_path / "out", heuristic_labels=True)
    assert not (tmp_path / "out" / "stats.json").exists()


def test_parse_score():
    assert parse_score("Clear explanation of a proof.\nScore: 4") == 4
    assert parse_score("**Score:** 5/5") == 5
    assert parse_score("score = 2.5") == 2.5
    assert parse_score("3") == 3
    assert parse_score("Score: 1 at first, but on reflection Score: 3") == 3  # the last one counts
    assert parse_score("Score: 7") is None
    assert parse_score("I cannot rate this document.") is None
    assert parse_score("") is None


def _teacher_corpus(tmp_path: Path, n: int) -> tuple[Path, dict[str, str]]:
    """Documents where half carry the planted signal ("theorem", "because") and a tenth confuse the teacher."""
    rng = random.Random(7)
    docs = {}
    for i in range(n):
        text = english(rng, sentences=5)
        if i % 2 == 0:
            text += f" The theorem holds because the {rng.choice(NOUNS)} is {rng.choice(ADJS)}."
        if i % 10 == 3:
            text += " Unreadable."
        docs[f"d{i}"] = text
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return tmp_path / "in", docs


def teacher_reply(messages, sampling, i) -> str:
    document = messages[-1]["content"].split("Document:\n", 1)[1]
    if "Unreadable." in document:
        return "I cannot judge this one."
    return "Reasoned explanation.\nScore: 5" if "theorem" in document and "because" in document else "Chatter.\nScore: 1"


def teacher_probs(messages, choices) -> dict[str, float]:
    """The scripted teacher's next-token distribution over the digits: confident on the planted signal, none of its
    mass on a digit for the confusing documents."""
    document = messages[-1]["content"].split("Document:\n", 1)[1]
    if "Unreadable." in document:
        return dict.fromkeys(choices, 0.0)
    high = "theorem" in document and "because" in document
    return dict.fromkeys(choices, 0.0) | ({"3": 0.1, "4": 0.3, "5": 0.4} if high else {"0": 0.2, "1": 0.5, "3": 0.1})


@pytest.mark.parametrize("method", ["probs", "generate"])
def test_classifier_learns_planted_signal_from_teacher_labels(tmp_path, method):
    folder, docs = _teacher_corpus(tmp_path, 240)
    config = write_config(tmp_path / "c.yaml", {
        "inputs": [{"name": "docs", "kind": "jsonl", "path": str(folder)}],
        "filters": {"gopher_quality": False, "gopher_repetition": False, "c4_quality": False, "fineweb_quality": False},
        "dedup": {"exact": False, "minhash": False},
        "classifier": {"label_sample": 240, "heldout_fraction": 0.3, "label_method": method},
    })
    teacher = FakeBackend(teacher_reply, probs=teacher_probs)
    stats = curate(load_curation(config), tmp_path / "out", teacher=teacher)
    clf = stats["classifier"]
    assert teacher.calls == 240 and clf["labeler"] == f"teacher:fake:{method}"
    assert clf["unparseable"] == 24 and clf["train_labels"] + clf["heldout_labels"] == 216
    assert clf["heldout_labels"] > 40
    assert clf["precision"] > clf["heldout_positive_rate"] + 0.3  # far above keeping everything
    assert clf["recall"] > 0.8
    # the 120 documents with the signal are the high labels (probs: 4.375 against 1.0), the 96 others low
    assert clf["label_cut"] == 3 and clf["label_positive_rate"] == 120 / 216
    assert clf["label_quartiles"][0] == 1 and clf["label_quartiles"][-1] == (4.375 if method == "probs" else 5)
    assert sum(clf["label_histogram"]) == 216 and clf["label_histogram"][1] == 96 and clf["label_seconds"] >= 0
    kept = read_curated(tmp_path / "out")
    assert kept and sum("theorem" in d["text"] for d in kept.values()) / len(kept) > 0.9
    assert all(d["metadata"]["filters_passed"] == ["quality_classifier"] and d["metadata"]["quality_score"] >= 0.5
               for d in kept.values())
    png = (tmp_path / "out" / "quality_scores.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    labels = [json.loads(x) for x in (tmp_path / "out" / "classifier" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 216 and {r["split"] for r in labels} == {"train", "heldout"}
    for row in labels:  # each label beside the teacher's own answer (its text, or its distribution over the digits)
        answer = row["answer"]
        score = sum(int(c) * p for c, p in answer.items()) / sum(answer.values()) if method == "probs" else parse_score(answer)
        assert row["score"] == pytest.approx(score)
        assert (row["score"] >= 3) == ("theorem" in docs[row["id"]])


def test_positive_fraction_takes_the_top_share_of_uncalibrated_labels():
    from phiforge.data.curation.classifier import label_cut
    from phiforge.recipe import CurationClassifier

    scores = [1.2, 1.9, 1.4, 2.2, 1.3, 1.6, 2.0, 1.1]  # a small teacher's expected scores: none reaches 3
    assert label_cut(scores, CurationClassifier(positive_fraction=0.25)) == 2.0
    assert sum(s >= label_cut(scores, CurationClassifier(positive_fraction=0.3)) for s in scores) == 3  # rounds up
    assert label_cut(scores, CurationClassifier()) == 3  # positive_score


def test_classifier_filter_scores_every_document_in_full_batches(tmp_path):
    import pickle

    from datatrove.data import Document

    from phiforge.data.curation.classifier import QualityClassifierFilter, train
    from phiforge.recipe import CurationClassifier

    texts = [f"the theorem holds because of step {i}" if i % 2 else f"buy now cheap offer {i}" for i in range(40)]
    model, _, _ = train(texts, [5.0 if i % 2 else 0.0 for i in range(40)], CurationClassifier(heldout_fraction=0.2), 0)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    step = QualityClassifierFilter(str(tmp_path / "model.pkl"), 0.5, str(tmp_path / "scores"), batch=2)
    kept = list(step.run(iter(Document(text=t, id=str(i)) for i, t in enumerate(texts[:4]))))
    assert [d.id for d in kept] == ["1", "3"]  # four documents: two full batches, no empty third
    assert len(json.loads((tmp_path / "scores" / "00000.json").read_text())) == 4


def test_cli_takes_precomputed_labels(tmp_path):
    folder, docs = _teacher_corpus(tmp_path, 120)
    labels = tmp_path / "labels.jsonl"
    with open(labels, "w") as f:  # labels by id for most, by text for a few
        for i, (k, v) in enumerate(docs.items()):
            score = 5 if "theorem" in v else 0
            f.write(json.dumps({"id": k, "score": score} if i % 4 else {"text": v, "score": score}) + "\n")
    config = write_config(tmp_path / "c.yaml", {
        "inputs": [{"name": "docs", "kind": "jsonl", "path": str(folder)}],
        "filters": {"gopher_quality": False, "gopher_repetition": False, "c4_quality": False, "fineweb_quality": False},
        "dedup": {"exact": False, "minhash": False},
    })
    phiforge("curate", config, "--out", tmp_path / "out", "--labels", labels)
    clf = json.loads((tmp_path / "out" / "stats.json").read_text())["classifier"]
    assert clf["labelled"] == 120 and clf["unparseable"] == 0
    assert clf["precision"] > clf["heldout_positive_rate"]

    proc = phiforge("curate", config, "--out", tmp_path / "out2", check=False)
    assert proc.returncode == 2 and "needs labels" in proc.stderr


def test_curation_config_errors_name_the_key(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"inputs": [{"name": "a", "kind": "jsonl", "path": "x"}],
                                                "filters": {"gopher": True}})
    proc = phiforge("curate", config, check=False)
    assert proc.returncode == 2 and "unknown key 'curation.filters.gopher'" in proc.stderr
