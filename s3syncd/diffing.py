"""What a change does to a file's content: a table, text or binary comparison of two versions.

Pure apart from reading the two files it is given (no clock, no network): the daemon fetches the
remote version to ``.S3/tmp`` and hands both paths in. The result is a frozen value with a
JSON form (``s3syncctl diff --json``) and a text rendering.

Tables (CSV/TSV; Parquet and Excel when ``pyarrow``/``openpyxl`` are installed) are compared
with pandas by a key column when one is unique on both sides, else by position (aligned with
difflib, so one inserted row is one added row, not a cascade of changed ones). Cells are read
as text, so ``1.0`` vs ``1`` is a change and nothing is rounded away.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd.model import shown

# A file above this is summarised (sizes, MD5s), never parsed: a diff must not eat the RAM
# of a daemon that is syncing meanwhile.
MAX_COMPARE_BYTES = 64 << 20
# difflib is quadratic at worst: bigger text files get sizes and MD5s, not a line diff.
MAX_TEXT_BYTES = 8 << 20
MAX_TEXT_LINES = 400
SAMPLE_ROWS = 10
SAMPLE_CELLS = 20

_DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# Optional readers: the extension and the module pandas needs for it.
_OPTIONAL = {".parquet": "pyarrow", ".xlsx": "openpyxl", ".xlsm": "openpyxl"}


class DiffKind(enum.Enum):
    IDENTICAL = "identical"
    TABLE = "table"
    TEXT = "text"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Version:
    """One side of a comparison; ``exists`` False for the side of a create or a delete."""

    label: str
    exists: bool
    size: int
    md5: str

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "exists": self.exists, "size": self.size, "md5": self.md5}


@dataclass(frozen=True, slots=True)
class CellChange:
    row: str  # the key value, or "#<n>" (1-based row of the new side) when by position
    column: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class TableDiff:
    key: str | None  # the key column, None when compared by position
    rows_old: int
    rows_new: int
    added: int
    removed: int
    changed: int
    columns_added: tuple[str, ...]
    columns_removed: tuple[str, ...]
    added_sample: tuple[dict[str, str], ...]
    removed_sample: tuple[dict[str, str], ...]
    cells_sample: tuple[CellChange, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rows_old": self.rows_old,
            "rows_new": self.rows_new,
            "rows_added": self.added,
            "rows_removed": self.removed,
            "rows_changed": self.changed,
            "columns_added": list(self.columns_added),
            "columns_removed": list(self.columns_removed),
            "added_sample": [dict(r) for r in self.added_sample],
            "removed_sample": [dict(r) for r in self.removed_sample],
            "changed_cells": [
                {"row": c.row, "column": c.column, "old": c.old, "new": c.new}
                for c in self.cells_sample
            ],
        }


@dataclass(frozen=True, slots=True)
class TextDiff:
    lines: tuple[str, ...]  # unified diff lines, without newlines
    truncated: int  # diff lines left out after MAX_TEXT_LINES

    def to_json(self) -> dict[str, Any]:
        return {"unified": list(self.lines), "truncated_lines": self.truncated}


@dataclass(frozen=True, slots=True)
class FileDiff:
    path: str
    kind: DiffKind
    old: Version
    new: Version
    table: TableDiff | None = None
    text: TextDiff | None = None
    note: str = ""  # why a file was not compared in detail (too large, unreadable table)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind.value,
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "table": self.table.to_json() if self.table else None,
            "text": self.text.to_json() if self.text else None,
            "note": self.note,
        }

    def render(self) -> str:
        return "\n".join(_render(self))


def compare(
    path: str,
    old: Path | None,
    new: Path | None,
    old_label: str = "old",
    new_label: str = "new",
    *,
    max_bytes: int = MAX_COMPARE_BYTES,
    max_lines: int = MAX_TEXT_LINES,
    max_text_bytes: int = MAX_TEXT_BYTES,
) -> FileDiff:
    """Compare the file at ``old`` with the one at ``new`` (None: that side has no file).

    ``path`` is the synced path; its extension picks the table reader.
    """
    a, b = _version(old, old_label), _version(new, new_label)
    if a.exists and b.exists and a.md5 == b.md5:
        return FileDiff(path, DiffKind.IDENTICAL, a, b)
    if a.size > max_bytes or b.size > max_bytes:
        return FileDiff(path, DiffKind.BINARY, a, b, note=f"larger than {max_bytes} bytes")
    old_data = old.read_bytes() if old is not None and a.exists else b""
    new_data = new.read_bytes() if new is not None and b.exists else b""
    ext = Path(path).suffix.lower()
    if ext in _DELIMITED or (ext in _OPTIONAL and _readable(ext)):
        try:
            table = compare_tables(old if a.exists else None, new if b.exists else None, ext)
        except _Unreadable as exc:
            note = f"not read as a table ({exc}); compared as text"
        else:
            return FileDiff(path, DiffKind.TABLE, a, b, table=table)
    else:
        note = f"reading {ext} tables needs {_OPTIONAL[ext]}" if ext in _OPTIONAL else ""
    if max(a.size, b.size) > max_text_bytes:
        note = f"larger than {max_text_bytes} bytes: no line diff"
        return FileDiff(path, DiffKind.BINARY, a, b, note=note)
    text = compare_text(old_data, new_data, a.label, b.label, max_lines)
    if text is None:
        return FileDiff(path, DiffKind.BINARY, a, b, note=note)
    return FileDiff(path, DiffKind.TEXT, a, b, text=text, note=note)


def _version(path: Path | None, label: str) -> Version:
    if path is None or not path.is_file():
        return Version(label, False, 0, "")
    digest = hashlib.md5()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return Version(label, True, size, digest.hexdigest())


def _readable(ext: str) -> bool:
    return importlib.util.find_spec(_OPTIONAL[ext]) is not None


# --- text ---------------------------------------------------------------------------------


def _decode(data: bytes) -> str | None:
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def compare_text(
    old: bytes, new: bytes, old_label: str, new_label: str, max_lines: int = MAX_TEXT_LINES
) -> TextDiff | None:
    """A unified diff of two UTF-8 texts, or None when either is not text."""
    a, b = _decode(old), _decode(new)
    if a is None or b is None:
        return None
    lines = [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            a.splitlines(keepends=True),
            b.splitlines(keepends=True),
            fromfile=old_label,
            tofile=new_label,
        )
    ]
    return TextDiff(tuple(lines[:max_lines]), max(0, len(lines) - max_lines))


# --- tables -------------------------------------------------------------------------------


class _Unreadable(Exception):
    """Not a table pandas can read; the caller falls back to text."""


def _read_table(path: Path | None, ext: str) -> Any:
    import pandas as pd

    if path is None:
        return pd.DataFrame()
    try:
        if ext in _DELIMITED:
            return pd.read_csv(
                path, sep=_DELIMITED[ext], dtype=str, keep_default_na=False, encoding="utf-8"
            )
        if ext == ".parquet":
            return pd.read_parquet(path).astype(str)
        return pd.read_excel(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, UnicodeDecodeError, OSError, ImportError) as exc:
        # pandas' ParserError is a ValueError; a torn or binary file lands here.
        raise _Unreadable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def compare_tables(old: Path | None, new: Path | None, ext: str = ".csv") -> TableDiff:
    """Rows added/removed/changed and columns added/removed between two table files."""
    a, b = _read_table(old, ext), _read_table(new, ext)
    cols_a = [str(c) for c in a.columns]
    cols_b = [str(c) for c in b.columns]
    a.columns, b.columns = cols_a, cols_b
    common = [c for c in cols_a if c in cols_b]
    rows_a, rows_b = _rows(a, common), _rows(b, common)
    if not common:  # nothing to match rows on: every row is new
        rows_a, rows_b = [() for _ in range(len(a))], [() for _ in range(len(b))]
    key = _key_column(a, b, common) if len(a) and len(b) else None
    if key is not None:
        added, removed, changed = _match_by_key(rows_a, rows_b, common, common.index(key))
    else:
        added, removed, changed = _match_by_position(rows_a, rows_b)
    cells: list[CellChange] = []
    for i, j in changed:
        label = rows_b[j][common.index(key)] if key is not None else f"#{j + 1}"
        for col, x, y in zip(common, rows_a[i], rows_b[j], strict=True):
            if x != y and len(cells) < SAMPLE_CELLS:
                cells.append(CellChange(label, col, x, y))
    return TableDiff(
        key=key,
        rows_old=len(a),
        rows_new=len(b),
        added=len(added),
        removed=len(removed),
        changed=len(changed),
        columns_added=tuple(c for c in cols_b if c not in cols_a),
        columns_removed=tuple(c for c in cols_a if c not in cols_b),
        added_sample=tuple(_record(b, j) for j in added[:SAMPLE_ROWS]),
        removed_sample=tuple(_record(a, i) for i in removed[:SAMPLE_ROWS]),
        cells_sample=tuple(cells),
    )


def _rows(frame: Any, columns: list[str]) -> list[tuple[str, ...]]:
    # One conversion to Python lists: iterating pandas' string arrays cell by cell is ~10x
    # slower. Cells are text already (read with dtype=str, no NA conversion).
    if not columns:
        return []
    return [tuple(r) for r in frame[columns].astype(object).to_numpy().tolist()]


def _record(frame: Any, i: int) -> dict[str, str]:
    return {str(k): str(v) for k, v in frame.iloc[i].items()}


def _key_column(a: Any, b: Any, common: Sequence[str]) -> str | None:
    """The first shared column whose values are unique and non-empty on both sides."""
    for col in common:
        x, y = a[col], b[col]
        if x.is_unique and y.is_unique and not (x == "").any() and not (y == "").any():
            return col
    return None


Pairs = list[tuple[int, int]]


def _match_by_key(
    rows_a: list[tuple[str, ...]], rows_b: list[tuple[str, ...]], common: list[str], k: int
) -> tuple[list[int], list[int], Pairs]:
    where_a = {r[k]: i for i, r in enumerate(rows_a)}
    where_b = {r[k]: j for j, r in enumerate(rows_b)}
    added = [j for j, r in enumerate(rows_b) if r[k] not in where_a]
    removed = [i for i, r in enumerate(rows_a) if r[k] not in where_b]
    changed = [
        (where_a[r[k]], j)
        for j, r in enumerate(rows_b)
        if r[k] in where_a and rows_a[where_a[r[k]]] != r
    ]
    return added, removed, changed


def _match_by_position(
    rows_a: list[tuple[str, ...]], rows_b: list[tuple[str, ...]]
) -> tuple[list[int], list[int], Pairs]:
    # Aligned like a text diff: a replaced block pairs its rows as changes, the rest of a
    # longer block is added or removed.
    added: list[int] = []
    removed: list[int] = []
    changed: Pairs = []
    matcher = difflib.SequenceMatcher(a=rows_a, b=rows_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if op == "replace" else 0
        changed.extend((i1 + n, j1 + n) for n in range(paired))
        removed.extend(range(i1 + paired, i2))
        added.extend(range(j1 + paired, j2))
    return added, removed, changed


# --- rendering ----------------------------------------------------------------------------


def _side(v: Version) -> str:
    if not v.exists:
        return f"{v.label}: (no file)"
    return f"{v.label}: {v.size} bytes, md5 {v.md5}"


def _render(d: FileDiff) -> list[str]:
    out = [f"{shown(d.path)}", f"  {_side(d.old)}", f"  {_side(d.new)}"]
    if d.note:
        out.append(f"  note: {d.note}")
    if d.kind is DiffKind.IDENTICAL:
        out.append("identical content")
    elif d.kind is DiffKind.BINARY:
        out.append("binary files differ" if d.old.exists and d.new.exists else "binary file")
    elif d.table is not None:
        out.extend(_render_table(d.table))
    elif d.text is not None:
        out.extend(shown(line) for line in d.text.lines)
        if d.text.truncated:
            out.append(f"... {d.text.truncated} more diff lines not shown")
    return out


def _render_table(t: TableDiff) -> list[str]:
    how = f"by key column {shown(t.key)!r}" if t.key else "by position"
    out = [
        f"table: {t.rows_old} -> {t.rows_new} rows, compared {how}",
        f"  rows added {t.added}, removed {t.removed}, changed {t.changed}",
    ]
    if t.columns_added:
        out.append("  columns added: " + ", ".join(shown(c) for c in t.columns_added))
    if t.columns_removed:
        out.append("  columns removed: " + ", ".join(shown(c) for c in t.columns_removed))
    for row in t.added_sample:
        out.append("  + " + shown(_row_text(row)))
    for row in t.removed_sample:
        out.append("  - " + shown(_row_text(row)))
    for c in t.cells_sample:
        out.append(
            f"  ~ row {shown(c.row)}, {shown(c.column)}: {shown(c.old)!r} -> {shown(c.new)!r}"
        )
    more = t.added + t.removed - len(t.added_sample) - len(t.removed_sample)
    if more > 0:
        out.append(f"  ... {more} more added/removed rows not shown")
    return out


def _row_text(row: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items())
