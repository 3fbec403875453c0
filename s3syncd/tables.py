"""The legacy CSV tables (``versions.csv``, ``versionsLocal.csv``, ``deletedS3.csv``,
``deletedLocal.csv``) and the ignore list, as the original ``s3synchrony`` reads and
writes them.

Reading is tolerant (CRLF, BOM, ``Unnamed: N`` index columns, any row and column order)
but never guesses: every value is read as the exact string in the file, and a file that
is not a clean table raises :class:`MalformedTableError` naming the file and line.
Writing produces exactly what the original's ``to_csv(index=False)`` produces, minus the
things that make the original lose rows on its next read (empty or NA-like cells).
"""

from __future__ import annotations

import bisect
import codecs
import csv
import fnmatch
import io
import logging
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from s3syncd.atomicfile import write_atomic
from s3syncd.errors import MalformedTableError, StateError, UnsafePathError
from s3syncd.model import LEGACY_COLUMNS, Row, validate_rel_path

log = logging.getLogger(__name__)

FILE, EDITED_BY, TIME_EDITED, CHECKSUM = LEGACY_COLUMNS

# Written in place of an empty editor name: the original drops rows with an empty cell.
UNKNOWN_EDITOR = "unknown"
# Appended to an editor name that the original would read as NaN (see render_rows).
NA_SUFFIX = "_"

# The strings pandas' read_csv turns into NaN by default (``na_values``), as the union over
# the pandas versions legacy clients run (0.2x: no '<NA>'; 1.x adds '<NA>'; 2.x adds
# 'None'). Kept here rather than imported from pandas' private ``_libs`` so that what we
# write does not depend on which pandas this daemon happens to run; a test checks it still
# covers the installed pandas' list.
LEGACY_NA_VALUES: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)

_MD5_RE = re.compile(r"[0-9a-f]{32}")
_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_RE = re.compile(r"EOF inside string starting at row (\d+)")
_INDEX_COLUMN_PREFIX = "Unnamed: "
_GLOB_CHARS = frozenset("*?[")


# --- reading -----------------------------------------------------------------------------


def parse_rows(data: bytes, source: str) -> list[Row]:
    """Parse a legacy table, keeping every row in file order (duplicates included).

    Columns are found by header name; extra columns (the ``Unnamed: N`` index columns the
    original leaves in ``deletedS3.csv``) are ignored. Values are kept exactly as written,
    except that a trailing carriage return is removed. Rows with unsafe paths are returned
    too: see :func:`split_unsafe`. An empty (0-byte or blank) file has no rows.

    Raises MalformedTableError for non-UTF-8 bytes, a ragged row, a missing column, or an
    empty File or Checksum cell.
    """
    text = _decode(data, source)
    try:
        # Every value a string, nothing NaN: files named '1' or 'null' and a user named
        # 'NA' must come back as written (the original's type guessing loses them).
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            engine="c",
        )
    except pd.errors.EmptyDataError:
        return []
    except pd.errors.ParserError as exc:
        raise _parser_error(exc, source) from exc
    except (ValueError, csv.Error) as exc:
        raise MalformedTableError(f"{source}: {exc}") from exc

    if not isinstance(frame.index, pd.RangeIndex):
        # Every row had one field more than the header, so pandas silently took the first
        # column as the index and shifted the others: a ragged table, not a legacy one.
        raise _ragged_error(text, source)
    missing = [c for c in LEGACY_COLUMNS if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise MalformedTableError(f"{source} line 1: missing column(s) {names}")
    extra = [str(c) for c in frame.columns if c not in LEGACY_COLUMNS]
    if extra:
        log.debug("%s: ignoring columns %s", source, extra)

    if len(frame) == 0:
        return []
    last = frame.iloc[:, -1].tolist()
    # Only the line's last cell can have taken a stray CR from its line end; a CR inside
    # another (quoted) cell is part of the value and must be written back as it was.
    end = frame.columns[-1]
    columns = [
        [_clean(v) if name == end else str(v) for v in frame[name].tolist()]
        for name in LEGACY_COLUMNS
    ]
    # Interned: a manifest of 100,000 rows repeats few users and times, and its paths and
    # checksums are the same strings as the index's and the base's (memory per file).
    rows = [Row(*map(sys.intern, values)) for values in zip(*columns, strict=True)]
    # pandas pads a short row with empty strings, so an empty last cell may be a ragged
    # row; only then is the text re-scanned (with csv) to tell which, and where.
    suspects = [i for i, r in enumerate(rows) if not r.path or not r.checksum or last[i] == ""]
    if suspects:
        _check_suspects(text, source, rows, suspects)
    return rows


def parse_table(data: bytes, source: str) -> dict[str, Row]:
    """Parse a legacy table keyed by path; the last row wins (tombstones get re-appended)."""
    return {row.path: row for row in parse_rows(data, source)}


def split_unsafe(rows: Iterable[Row]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """Split rows into those safe to act on and ``(row, reason)`` for the others.

    Unsafe: a path refused by ``validate_rel_path``, a checksum that is not an MD5, or an
    empty Time Edited. The engine must not act on those (and ``render_rows`` would refuse
    the last two).
    """
    safe: list[Row] = []
    unsafe: list[tuple[Row, str]] = []
    for row in rows:
        try:
            validate_rel_path(row.path)
        except UnsafePathError as exc:
            unsafe.append((row, exc.message))
            continue
        if not _MD5_RE.fullmatch(row.checksum):
            unsafe.append((row, f"checksum {row.checksum!r} is not a lowercase hex MD5"))
        elif not row.time_edited:
            unsafe.append((row, "empty Time Edited"))
        else:
            safe.append(row)
    return safe, unsafe


def read_rows_file(path: Path) -> list[Row]:
    """Read a table file as rows in file order; a missing file has none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_rows(data, str(path))


def read_table_file(path: Path) -> dict[str, Row]:
    """Read a table file keyed by path (last row wins); a missing file is empty."""
    return {row.path: row for row in read_rows_file(path)}


def _decode(data: bytes, source: str) -> str:
    try:
        # utf-8-sig drops the BOM Excel and Notepad put in front of a saved CSV.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MalformedTableError(
            f"{source} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc


def _clean(value: object) -> str:
    # A stray '\r' survives when a file was written with '\r\r\n' line ends (old pandas on
    # Windows writing through a text-mode handle).
    return str(value).rstrip("\r")


def _parser_error(exc: pd.errors.ParserError, source: str) -> MalformedTableError:
    text = str(exc).strip()
    if m := _FIELDS_RE.search(text):
        expected, line, saw = m.groups()
        return MalformedTableError(f"{source} line {line}: expected {expected} fields, saw {saw}")
    if m := _EOF_RE.search(text):
        # pandas counts rows from 0, blank lines included.
        line = int(m.group(1)) + 1
        return MalformedTableError(f"{source} line {line}: quoted field never closed")
    return MalformedTableError(f"{source}: {text.removeprefix('Error tokenizing data. ')}")


def _records(text: str) -> list[tuple[int, list[str]]]:
    """Each non-blank record of ``text`` with the line it starts on, header first.

    Used only to explain an error: pandas does not say where a short row is.
    """
    out: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    previous_end = 0
    try:
        for fields in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            # pandas skips empty and whitespace-only lines; so must the numbering here.
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            out.append((start, fields))
    except csv.Error:
        pass  # pandas parsed it, so this is a corner the diagnosis need not cover
    return out


def _ragged_error(text: str, source: str) -> MalformedTableError:
    records = _records(text)
    if records:
        width = len(records[0][1])
        for line, fields in records[1:]:
            if len(fields) != width:
                return MalformedTableError(
                    f"{source} line {line}: expected {width} fields, saw {len(fields)}"
                )
    return MalformedTableError(f"{source}: rows do not match the header")


def _check_suspects(text: str, source: str, rows: Sequence[Row], suspects: list[int]) -> None:
    records = _records(text)
    width = len(records[0][1]) if records else 0
    data_records = records[1:]
    aligned = len(data_records) == len(rows)
    for i in suspects:
        where = f"line {data_records[i][0]}" if aligned else f"row {i + 1}"
        if aligned and len(data_records[i][1]) != width:
            raise MalformedTableError(
                f"{source} {where}: expected {width} fields, saw {len(data_records[i][1])}"
            )
        row = rows[i]
        if not row.path:
            raise MalformedTableError(f"{source} {where}: empty {FILE} cell")
        if not row.checksum:
            raise MalformedTableError(f"{source} {where}: empty {CHECKSUM} cell")


# --- writing -----------------------------------------------------------------------------


def legacy_editor(name: str) -> str:
    """The editor name as written: never empty, never read back as NaN by the original.

    Rule: an empty name becomes ``unknown``; a name equal to one of pandas' default NA
    strings (``NA``, ``null``, ``None``, ``nan``, ``N/A``, ``#N/A``, ... see
    ``LEGACY_NA_VALUES``) gets ``_`` appended (``NA`` → ``NA_``). Other names are written
    verbatim; leading/trailing spaces are kept, since pandas does not treat ``' NA'`` as NA.
    """
    if not name:
        return UNKNOWN_EDITOR
    if name in LEGACY_NA_VALUES:
        return name + NA_SUFFIX
    return name


def unwritable(row: Row) -> str | None:
    """Why :func:`render_rows` would refuse ``row``, or None if it can be written."""
    if not row.path:
        return "row with an empty path"
    if not row.time_edited or row.time_edited in LEGACY_NA_VALUES:
        return f"row {row.path!r}: Time Edited {row.time_edited!r} is empty or NA"
    if not _MD5_RE.fullmatch(row.checksum):
        return f"row {row.path!r}: checksum {row.checksum!r} is not an MD5 hex"
    return None


def render_rows(rows: Iterable[Row], *, sort: bool = True) -> bytes:
    """Render rows as the original writes a table: UTF-8, ``\\n``, minimal quoting.

    The header is exactly ``File,Edited By,Time Edited,Checksum`` and there is no index
    column. With ``sort`` (the default) rows are ordered by path for stable diffs; the sort
    is stable, so duplicate paths keep their given order and the last still wins on read.
    Editor names go through :func:`legacy_editor`. A file whose name is an NA string is
    written as is (it cannot be renamed); :func:`legacy_unsafe_paths` reports those.

    Raises ValueError for an empty Time Edited or a checksum that is not 32 lowercase hex
    digits: either is a caller bug, and the original would drop or misread the row.
    """
    items = list(rows)
    if sort:
        items.sort(key=lambda r: r.path)
    for row in items:
        problem = unwritable(row)
        if problem:
            raise ValueError(problem)
    if any("\r" in cell for r in items for cell in r.to_list()):
        return _render_quoting_cr(items)
    frame = pd.DataFrame(
        {
            FILE: [r.path for r in items],
            EDITED_BY: [legacy_editor(r.edited_by) for r in items],
            TIME_EDITED: [r.time_edited for r in items],
            CHECKSUM: [r.checksum for r in items],
        },
        columns=list(LEGACY_COLUMNS),
        dtype=object,
    )
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def splice_rows(data: bytes, remove: Collection[str], add: Sequence[Row], source: str) -> bytes:
    """``data`` (a table as read) with the rows of the paths in ``remove`` taken out and
    ``add`` put in; every other row is kept byte for byte, however odd.

    A commit changes only our own rows: a colleague's row with a checksum or time we
    would never write is theirs to fix, not ours to drop or normalise. Added rows are
    rendered by :func:`render_rows` (so they are validated) and go where a sorted table
    would have them: after the last kept row whose path sorts before or equal to theirs.
    A table whose header is not exactly the legacy one (an ``Unnamed: 0`` index column)
    is rewritten with the legacy columns only, the other rows' cells kept as read.
    Raises MalformedTableError for a file :func:`parse_rows` would refuse.
    """
    text = _decode(data, source)
    records = _raw_records(text)
    if not records:
        return render_rows(add)
    bom = codecs.BOM_UTF8.decode() if data.startswith(codecs.BOM_UTF8) else ""
    header = records[0]
    newline = "\r\n" if header.endswith("\r\n") else "\n"
    columns = [_clean(c) for c in _fields(header)]
    canonical = columns == list(LEGACY_COLUMNS)
    if not canonical:
        missing = [c for c in LEGACY_COLUMNS if c not in columns]
        if missing:
            raise MalformedTableError(f"{source} line 1: missing column(s) {missing}")
        where = [columns.index(c) for c in LEGACY_COLUMNS]
        header = ",".join(LEGACY_COLUMNS) + newline
    kept: list[tuple[str | None, str]] = []
    for raw in records[1:]:
        if not raw.strip():
            kept.append((None, raw))  # a blank line: pandas skips it, we keep it
            continue
        cells = [_clean(c) for c in _fields(raw)]
        path = cells[columns.index(LEGACY_COLUMNS[0])] if len(cells) == len(columns) else None
        if path is not None and path in remove:
            continue
        if not canonical:
            if path is None:
                raise MalformedTableError(f"{source}: a row does not match the header")
            raw = _render_cells([cells[i] for i in where], newline)
        kept.append((path, raw))
    ours = [r.replace("\n", newline) for r in _raw_records(render_rows(add).decode())[1:]]
    ours_paths = sorted(r.path for r in add)
    # Insert each added row after the last kept row whose path sorts <= its own.
    order = sorted((p, i) for i, (p, _) in enumerate(kept) if p is not None)
    keys = [p for p, _ in order]
    latest: list[int] = []
    for _, i in order:
        latest.append(max(i, latest[-1]) if latest else i)
    slots: dict[int, list[str]] = {}
    for path, line in zip(ours_paths, ours, strict=True):
        k = bisect.bisect_right(keys, path)
        slots.setdefault(latest[k - 1] + 1 if k else 0, []).append(line)
    out = [bom, header]
    for i in range(len(kept) + 1):
        for line in slots.get(i, []):
            if not out[-1].endswith("\n"):
                out[-1] += newline
            out.append(line)
        if i < len(kept):
            if not out[-1].endswith("\n"):
                out[-1] += newline
            out.append(kept[i][1])
    return "".join(out).encode("utf-8")


def _raw_records(text: str) -> list[str]:
    """``text`` cut into CSV records with their line ends, a quoted newline kept inside."""
    records: list[str] = []
    current = ""
    lines = text.split("\n")  # not splitlines(): that also cuts at \x0c, \u2028, ...
    for n, line in enumerate(lines):
        current += line if n == len(lines) - 1 else line + "\n"
        if current and current.count('"') % 2 == 0:
            records.append(current)
            current = ""
    if current:
        records.append(current)
    return records


def _fields(record: str) -> list[str]:
    return next(csv.reader(io.StringIO(record, newline="")), [])


def _quote_cell(cell: str) -> str:
    """Minimal CSV quoting that also quotes a bare carriage return (see _render_quoting_cr)."""
    if any(c in cell for c in ',"\n\r'):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def _render_cells(cells: list[str], newline: str) -> str:
    return ",".join(_quote_cell(c) for c in cells) + newline


def _render_quoting_cr(items: list[Row]) -> bytes:
    """What ``to_csv`` writes, except that a cell holding a carriage return is quoted:
    pandas (and the csv module, with a '\\n' line end) leave it bare, so every reader
    would split the row there and the whole table would become unreadable. Such a row
    only comes from someone else's table (we never sync such a name), and we must write it
    back readable."""

    lines = [",".join(LEGACY_COLUMNS)]
    for r in items:
        cells = (r.path, legacy_editor(r.edited_by), r.time_edited, r.checksum)
        lines.append(",".join(_quote_cell(c) for c in cells))
    return ("\n".join(lines) + "\n").encode("utf-8")


def legacy_unsafe_paths(rows: Iterable[Row]) -> list[str]:
    """Paths that a legacy client would lose or misread in a table of these rows.

    We cannot rename a user's file, so such rows are written as they are and the engine
    warns instead. The original reads tables with pandas defaults and then ``dropna()``:
    a path equal to an NA string (a file named ``null`` or ``NA``) is read as NaN and its
    row dropped; and when *every* path looks like a number or a boolean (files ``1``,
    ``2``), the whole column turns numeric and no path compares equal to the scanned names.
    Decided by reading the column back with this pandas' defaults, as the original does.
    """
    paths = list(dict.fromkeys(r.path for r in rows))
    if not paths:
        return []
    dropped = [p for p in paths if p in LEGACY_NA_VALUES]
    text = pd.DataFrame({FILE: paths}, dtype=object).to_csv(index=False, lineterminator="\n")
    column = pd.read_csv(io.StringIO(text))[FILE]
    if pd.api.types.is_string_dtype(column.dtype):
        return dropped
    return paths


def write_table_file(path: Path, rows: Iterable[Row], *, sort: bool = True) -> None:
    """Replace a table file atomically with ``rows`` (see :func:`render_rows`)."""
    data = render_rows(rows, sort=sort)
    try:
        write_atomic(path, data)
    except OSError as exc:  # write_atomic translates; this guards its own edges
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- ignore list -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """The entries of ``ignores3.txt``.

    An entry without ``*``, ``?`` or ``[`` names a path exactly, or a folder and everything
    below it (``raw`` matches ``raw/x.csv``), as in the original (which had exact paths
    only). Other entries are globs matched with ``fnmatch.fnmatchcase`` (so ``*`` also
    crosses ``/``): one without ``/`` matches any path component at any depth (``*.tmp``
    matches ``a/b.tmp``; a matching folder covers its contents), one with ``/`` matches
    from the top (``data/*.csv``), or from any depth if it starts with ``**/``.
    """

    exact: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()

    def matches(self, rel_path: str) -> bool:
        parts = rel_path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if self.exact and any(p in self.exact for p in prefixes):
            return True
        return any(_glob_matches(pattern, parts, prefixes) for pattern in self.globs)

    def __bool__(self) -> bool:
        return bool(self.exact or self.globs)


def _glob_matches(pattern: str, parts: list[str], prefixes: list[str]) -> bool:
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in parts)
    if pattern.startswith("**/"):
        tail = pattern[3:]
        # Every run of whole components: 'a/b', 'b', 'b/c', ... (any start, any depth).
        return any(
            fnmatch.fnmatchcase("/".join(parts[i : j + 1]), tail)
            for i in range(len(parts))
            for j in range(i, len(parts))
        )
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def parse_ignores(text: str) -> IgnoreRules:
    """Parse the text of ``ignores3.txt`` (see :class:`IgnoreRules`)."""
    exact: set[str] = set()
    globs: list[str] = []
    for raw in text.splitlines():
        entry = raw.rstrip()
        if not entry or entry.startswith("#"):
            continue
        # The original ran on Windows, where users typed paths with backslashes.
        entry = entry.replace("\\", "/").removeprefix("./").rstrip("/")
        if not entry:
            continue
        if _GLOB_CHARS.intersection(entry):
            globs.append(entry)
        else:
            exact.add(entry)
    return IgnoreRules(frozenset(exact), tuple(dict.fromkeys(globs)))


def read_ignores(path: Path) -> IgnoreRules:
    """Read ``ignores3.txt``; a missing file ignores nothing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return IgnoreRules()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Fail loudly: guessing the encoding could stop ignoring a file the user excluded.
        line = data[: exc.start].count(b"\n") + 1
        raise StateError(f"{path} line {line}: not UTF-8") from exc
    return parse_ignores(text)
