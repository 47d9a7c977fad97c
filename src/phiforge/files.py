"""Atomic file writes (each artifact appears whole or not at all: temp file, then rename); jsonl and parquet rows.

Nothing of the user's is ever replaced by accident: a file at an output path is replaced (as any writer
would), but a directory only when phiforge wrote it, which it records with a marker file inside
(OUTPUT_MARKER). Any other directory in the way is a one-line error. A full disk is a one-line error
naming the path being written, whatever form the writer reported it in.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from phiforge.errors import UserError

Row = TypeVar("Row", bound=BaseModel)

OUTPUT_MARKER = ".phiforge-output"  # inside every directory atomic_path wrote: only those are ever replaced
# atomic_path's temporaries: ".NAME." + mkdtemp's 8 random characters + ".tmp"
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# Writers report a full disk many ways (OSError 28, torch's "unexpected pos", numpy's short write, safetensors'
# I/O error, sqlite's "disk is full"), so a failed write on a filesystem with less than this left is one too.
NEARLY_FULL_BYTES = 1 << 20
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path` (file or directory).

    A directory written this way gets OUTPUT_MARKER, and only a directory with it may be replaced.
    """
    path = Path(path)
    refuse_foreign_directory(path)
    ensure_dir(path.parent)
    with full_disk_is_user_error(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        target = tmp / path.name
        try:
            yield target
            if target.is_dir() and not target.is_symlink():
                (target / OUTPUT_MARKER).touch()
                if path.is_symlink() or (path.exists() and not path.is_dir()):
                    raise UserError(f"{path} is a file or a link, and phiforge writes a directory there; "
                                    "move it away or choose another path")
            refuse_foreign_directory(path)  # checked again: the writer may have run for hours
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(target, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def refuse_foreign_directory(path: Path) -> None:
    """A UserError when `path` is a directory that phiforge did not write (it will not be deleted)."""
    if path.is_dir() and not path.is_symlink() and not (path / OUTPUT_MARKER).is_file():
        raise UserError(f"{path} is a directory that phiforge did not write; it is left as it is: "
                        "move it away or choose another output path")


def ensure_dir(path: Path) -> None:
    """mkdir -p, with a file in the way as a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot make directory {path}: a file is in the way") from None


@contextmanager
def full_disk_is_user_error(path: Path) -> Iterator[None]:
    """Report a full disk (or quota) while writing under `path` as one line naming it; nothing else changes."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if not disk_full(e, path):
            raise
        raise UserError(full_disk_message(e, path)) from None


def full_disk_message(e: BaseException, path: Path | str | None) -> str:
    what = "disk quota exceeded" if isinstance(e, OSError) and e.errno == errno.EDQUOT else "no space left on device"
    where = f" while writing {path}" if path else ""
    return f"{what}{where}; free some space there and rerun the same command (what was finished is kept)"


def disk_full(e: BaseException, path: Path) -> bool:
    if isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS:
        return True
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete atomic_path temporaries under `root` left by a killed process; only safe while no other process
    writes there (a run holds the run directory's lock). Returns what was removed."""
    removed = []
    for parent, dirs, _ in os.walk(root):
        for name in [d for d in dirs if TEMPORARY.fullmatch(d)]:
            shutil.rmtree(Path(parent) / name, ignore_errors=True)
            removed.append(Path(parent) / name)
            dirs.remove(name)  # do not walk into what is gone
    return removed


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary path (a file or a directory), then move it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_jsonl(path: Path) -> Iterator[dict]:
    """Yield the rows of a jsonl file; a malformed line is a UserError naming file and line."""
    return (row for _, row in numbered_jsonl(path))


def read_jsonl_as(path: Path, model: type[Row]) -> list[Row]:
    """The rows of a jsonl file as pydantic models; a malformed or invalid line is a UserError naming file, line
    and the first wrong field."""
    rows = []
    for lineno, row in numbered_jsonl(path):
        try:
            rows.append(model.model_validate(row))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(map(str, first["loc"])) or "row"
            raise UserError(f"{path}:{lineno}: {field}: {first['msg']}") from None
    return rows


def numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each row of a jsonl file, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, row


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl or parquet file, streamed."""
    path = Path(path)
    if path.suffix != ".parquet":
        yield from read_jsonl(path)
        return
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as jsonl, or as parquet when the path ends in .parquet."""
    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(path, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    def flush(chunk: list[dict[str, Any]], writer: Any, tmp: Path) -> Any:
        table = pa.Table.from_pylist(chunk)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
        return writer

    count, chunk, writer = 0, [], None
    with atomic_path(path) as tmp:
        for row in rows:
            chunk.append(row)
            count += 1
            if len(chunk) == 4096:
                writer, chunk = flush(chunk, writer, tmp), []
        if chunk or writer is None:
            writer = flush(chunk, writer, tmp)
        writer.close()
    return count
