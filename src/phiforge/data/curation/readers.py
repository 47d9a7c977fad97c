"""Readers for organic sources, as datatrove steps.

datatrove's own readers serve parquet and WARC. jsonl gets a checked subclass because datatrove's JsonlReader logs
a bad line without its number and gives up on the rest of a file at the first non-UTF-8 byte; here every bad record
is counted, written to an issues file with file and line, and skipped (or stops the run, `on_bad_input: stop`).
datatrove has no reader for plain-text, HTML, PDF or TeX folders, so `FileReader` reads one document per file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader

from phiforge.recipe import CurationInput


class BadInput(Exception):
    """A bad record under `on_bad_input: stop`; the message is `file:line: problem`."""


class IssueLog:
    """Counts bad records (datatrove stats) and appends each one to ISSUES_DIR/SOURCE_RANK.jsonl for the report."""

    def _init_issues(self, issues_dir: str, source: str, stop: bool) -> None:
        self.issues_dir = issues_dir
        self.source = source
        self.stop = stop
        self.rank = 0

    def _issues_path(self) -> Path:
        return Path(self.issues_dir) / f"{self.source}_{self.rank:05d}.jsonl"

    def bad(self, file: str, line: int, problem: str) -> None:
        self.stat_update("bad_input", f"bad_input/{problem.split(' (')[0]}")  # type: ignore[attr-defined]
        where = f"{file}:{line}" if line else file
        path = self._issues_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"source": self.source, "file": file, "line": line, "problem": problem}) + "\n")
        if self.stop:
            raise BadInput(f"{where}: {problem}")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.rank = rank
        self._issues_path().unlink(missing_ok=True)  # a rerun of this task reports afresh
        yield from super().run(data, rank, world_size)  # type: ignore[misc]


class CheckedJsonlReader(IssueLog, JsonlReader):
    name = "jsonl (checked)"

    def __init__(self, *args, issues_dir: str, source: str, stop: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_issues(issues_dir, source, stop)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        import orjson

        where = self.data_folder.resolve_paths(filepath)
        empty = True
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for lineno, raw in enumerate(f, 1):
                empty = False
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.bad(where, lineno, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-encode the file as UTF-8")
                    continue
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    self.bad(where, lineno, f"not valid JSON ({e})")
                    continue
                if not isinstance(row, dict):
                    self.bad(where, lineno, "not a JSON object (expected one object per line)")
                    continue
                text = row.get(self.text_key)
                if not isinstance(text, str) or not text.strip():
                    self.bad(where, lineno, f"no text (field '{self.text_key}' missing, empty or not a string)")
                    continue
                with self.track_time():
                    document = self.get_document_from_dict(row, filepath, lineno)
                yield document
        if empty:
            self.bad(where, 0, "empty file")


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def _tex_text(data: bytes) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    return LatexNodes2Text().latex_to_text(data.decode("utf-8"))


def _plain_text(data: bytes) -> str:
    return data.decode("utf-8")


FILE_CONVERTERS = {"text": _plain_text, "html": _plain_text, "pdf": _pdf_text, "tex": _tex_text}


class FileReader(IssueLog, BaseDiskReader):
    """One document per file: plain text, HTML (extracted later by trafilatura), PDF (pypdf) or TeX (pylatexenc)."""

    name = "file reader"

    def __init__(self, data_folder, kind: str, *, issues_dir: str, source: str, stop: bool, **kwargs) -> None:
        super().__init__(data_folder, **kwargs)
        self.kind = kind
        self._init_issues(issues_dir, source, stop)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        where = self.data_folder.resolve_paths(filepath)
        with self.data_folder.open(filepath, "rb") as f:
            data = f.read()
        if not data.strip():
            self.bad(where, 0, "empty file")
            return
        try:
            text = FILE_CONVERTERS[self.kind](data)
        except UnicodeDecodeError as e:
            self.bad(where, 0, f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-encode the file as UTF-8")
            return
        except Exception as e:  # noqa: BLE001 - pypdf and pylatexenc raise many types on a broken file; each is one bad record
            self.bad(where, 0, f"cannot parse as {self.kind} ({type(e).__name__}: {e})")
            return
        if not text.strip():
            self.bad(where, 0, f"no text in this {self.kind} file")
            return
        with self.track_time():
            document = self.get_document_from_dict({"text": text, "id": filepath, "format": self.kind}, filepath, 0)
        yield document


def make_reader(inp: CurationInput, issues_dir: Path, stop: bool) -> BaseDiskReader:
    """The datatrove reader for one configured input; documents carry `source` (and `file_path`) metadata."""
    path = inp.path.resolve()  # Slurm and Ray tasks may run in another working directory
    folder, glob = str(path), inp.glob
    if path.is_file():
        folder, glob = str(path.parent), path.name
    common = dict(glob_pattern=glob, default_metadata={"source": inp.name})
    checked = dict(issues_dir=str(issues_dir), source=inp.name, stop=stop)
    if inp.kind == "jsonl":
        return CheckedJsonlReader(folder, text_key=inp.text_key, id_key=inp.id_key, **common, **checked)
    if inp.kind == "parquet":
        return ParquetReader(folder, text_key=inp.text_key, id_key=inp.id_key, **common)
    if inp.kind == "warc":
        return WarcReader(folder, **common)
    return FileReader(folder, inp.kind, **common, **checked)
