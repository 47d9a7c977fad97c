"""Seed curation: passages and code snippets cut from organic sources, scored, the best kept per topic.

The report grows its synthetic data from seeds picked for quality (section 2.1). Here a seed's score is
a cheap heuristic (prose that reads like prose; code with a docstring and a moderate size), optionally
averaged with the teacher's 0-10 rating of its educational value.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Iterable, Iterator

from phiforge.errors import UserError
from phiforge.files import read_jsonl
from phiforge.generation.base import Backend, Sampling

RATING_PROMPT = (
    "Rate the educational value of the following {kind} for teaching a student, from 0 (useless) to 10 "
    "(excellent textbook material). Reply with the number only.\n\n{text}"
)


def read_source_texts(path: Path, field: str) -> Iterator[str]:
    """Texts from a jsonl or parquet file's `field`; a row without it is a one-line error."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: Iterable[dict] = pq.read_table(path).to_pylist()
    else:
        rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get(field), str):
            raise UserError(f"{path}:{i}: seed row has no text field {field!r} (set `field:` in the recipe's synth.seeds)")
        yield row[field]


def passages(doc: str, min_chars: int, max_chars: int) -> Iterator[str]:
    """Consecutive paragraphs merged until a passage is long enough; longer ones are cut."""
    buf = ""
    for para in re.split(r"\n\s*\n", doc):
        para = para.strip()
        if not para:
            continue
        buf = f"{buf}\n\n{para}" if buf else para
        if len(buf) >= min_chars:
            yield buf[:max_chars]
            buf = ""


def code_units(doc: str, min_chars: int, max_chars: int) -> Iterator[str]:
    """Top-level functions and classes of a Python file; files that do not parse give none."""
    try:
        tree = ast.parse(doc)
    except (SyntaxError, ValueError):
        return
    lines = doc.splitlines()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.end_lineno:
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if min_chars <= len(text) <= max_chars:
                yield text


def heuristic_score(text: str, kind: str) -> float:
    """0..1: higher for prose with sentences and letters, or code with a docstring and comments."""
    if kind == "code":
        has_doc = 1.0 if re.search(r'"""|\'\'\'', text) else 0.0
        size = min(len(text), 1500) / 1500
        return round(0.6 * has_doc + 0.4 * size, 3)
    letters = sum(c.isalpha() for c in text) / max(1, len(text))
    sentences = len(re.findall(r"[a-z][.!?](\s|$)", text)) / max(1, len(text) / 200)
    return round(0.6 * letters + 0.4 * min(1.0, sentences), 3)


def parse_rating(reply: str) -> float | None:
    found = re.search(r"\d+(?:\.\d+)?", reply)
    return min(10.0, float(found.group())) / 10 if found else None


def curate(
    docs: Iterable[str],
    source: str,
    kind: str,
    max_seeds: int,
    min_chars: int,
    max_chars: int,
    backend: Backend | None,
) -> list[dict]:
    """The best `max_seeds` seeds of one source (its topic), by heuristic and optional teacher rating."""
    cut = code_units if kind == "code" else passages
    units = list(dict.fromkeys(u for d in docs for u in cut(d, min_chars, max_chars)))  # exact duplicates once
    seeds = [
        {"id": f"{source}:{hashlib.blake2b(u.encode(), digest_size=6).hexdigest()}", "source": source, "kind": kind,
         "text": u, "heuristic": heuristic_score(u, kind)}
        for u in units
    ]
    # Rate only the heuristic's top candidates: the teacher's time goes where it can change the pick.
    seeds.sort(key=lambda s: -s["heuristic"])
    seeds = seeds[: max_seeds * 2]
    if backend is not None and seeds:
        asks = [[{"role": "user", "content": RATING_PROMPT.format(kind="passage" if kind == "text" else "code", text=s["text"])}] for s in seeds]
        for s, (reply,) in zip(seeds, backend.chat(asks, Sampling(temperature=0.0, max_tokens=8))):
            s["rating"] = parse_rating(reply)
    for s in seeds:
        s["score"] = s["heuristic"] if s.get("rating") is None else round((s["heuristic"] + s["rating"]) / 2, 3)
    seeds.sort(key=lambda s: -s["score"])
    return seeds[:max_seeds]
