"""The legacy CSV tables and the ignore list (s3syncd.tables).

"The original's parsing" below is what s3synchrony does with a table: ``pd.read_csv(path)``
with pandas defaults, later ``.dropna()``. What we write must survive it row for row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3syncd.errors import MalformedTableError, StateError, UnsafePathError
from s3syncd.model import LEGACY_COLUMNS, TIME_FORMAT, Row, validate_rel_path
from s3syncd.tables import (
    LEGACY_NA_VALUES,
    IgnoreRules,
    legacy_editor,
    legacy_unsafe_paths,
    parse_ignores,
    parse_rows,
    parse_table,
    read_ignores,
    read_rows_file,
    read_table_file,
    render_rows,
    split_unsafe,
    write_table_file,
)

LEGACY = Path(__file__).parent / "data" / "legacy"
HEADER = b"File,Edited By,Time Edited,Checksum\n"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def row(
    path: str, user: str = "alice", time: str = "2021-01-01 00:00:00", content: str = ""
) -> Row:
    return Row(path, user, time, md5(content or path))


# The rows of versions_*.csv, in file order, values exactly as written.
VERSIONS = [
    Row("données/résumé 1.csv", "Zoë Dupont", "2021-03-04 09:15:27", md5("resume")),
    Row("reports/q1, final.csv", "alice", "2021-03-05 17:02:11", md5("q1")),
    Row('quotes/say "hi".txt', "bob", "2021-03-06 08:00:00", md5("hi")),
    Row("1", "NA", "2021-03-07 10:11:12", md5("one")),
    Row("2", "alice", "2021-03-07 10:11:13", md5("two")),
    Row("raw/data.csv", "null", "2021-03-08 23:59:59", md5("raw")),
]
TOMBSTONES = [
    Row("old.csv", "alice", "2020-12-01 12:00:00", md5("old")),
    Row("a, b.csv", "bob", "2020-12-02 12:00:00", md5("ab")),
    Row("old.csv", "carol", "2021-01-05 08:30:00", md5("old2")),
]


def original_read(data: bytes) -> pd.DataFrame:
    """How the original reads a table (pandas defaults), then drops NA rows as it does."""
    return pd.read_csv(io.BytesIO(data)).dropna()


# --- reading the original's files --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "versions_linux.csv",
        "versions_windows.csv",
        "versions_excel_bom.csv",
        "versions_crcrlf.csv",
    ],
)
def test_reads_legacy_versions_exactly(name: str) -> None:
    assert read_rows_file(LEGACY / name) == VERSIONS


def test_fixture_line_ends_are_what_they_claim() -> None:
    assert b"\r" not in (LEGACY / "versions_linux.csv").read_bytes()
    assert (LEGACY / "versions_windows.csv").read_bytes().count(b"\r\n") == 7
    assert (LEGACY / "versions_excel_bom.csv").read_bytes().startswith(b"\xef\xbb\xbfFile,")
    assert (LEGACY / "versions_crcrlf.csv").read_bytes().count(b"\r\r\n") == 7


def test_reads_numeric_looking_paths_and_na_user_as_strings() -> None:
    rows = read_rows_file(LEGACY / "versions_numeric.csv")
    assert [r.path for r in rows] == ["1", "2", "10"]
    assert {r.edited_by for r in rows} == {"NA"}
    # The original's own read of the same file loses all of it: that is the bug we avoid.
    data = (LEGACY / "versions_numeric.csv").read_bytes()
    assert pd.read_csv(io.BytesIO(data))["File"].dtype.kind == "i"
    assert len(original_read(data)) == 0


def test_original_drops_na_users_in_fixture() -> None:
    # Documents why render_rows rewrites NA-like editors: the original loses these rows.
    kept = original_read((LEGACY / "versions_linux.csv").read_bytes())
    survivors = ["données/résumé 1.csv", "reports/q1, final.csv", 'quotes/say "hi".txt', "2"]
    assert kept["File"].tolist() == survivors


@pytest.mark.parametrize("name", ["deletedS3_index1.csv", "deletedS3_index2.csv"])
def test_reads_deleted_s3_with_index_columns(name: str) -> None:
    assert read_rows_file(LEGACY / name) == TOMBSTONES
    table = read_table_file(LEGACY / name)
    assert list(table) == ["old.csv", "a, b.csv"]
    assert table["old.csv"].edited_by == "carol"  # the last tombstone wins


def test_header_only_and_empty_files_have_no_rows() -> None:
    assert read_rows_file(LEGACY / "versionsLocal_header_only.csv") == []
    assert read_rows_file(LEGACY / "deletedLocal_empty.csv") == []
    assert parse_table(b"", "x.csv") == {}
    assert parse_rows(b"\n\n", "x.csv") == []
    assert parse_rows(b"\xef\xbb\xbf" + HEADER, "x.csv") == []


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_table_file(tmp_path / "versions.csv") == {}
    assert read_rows_file(tmp_path / "versions.csv") == []


def test_unreadable_file_is_state_error(tmp_path: Path) -> None:
    (tmp_path / "versions.csv").mkdir()
    with pytest.raises(StateError, match=r"versions\.csv"):
        read_table_file(tmp_path / "versions.csv")


def test_columns_found_by_name_in_any_order() -> None:
    data = (
        b"Checksum,Time Edited,Extra,File,Edited By\r\n"
        + f"{md5('a')},2021-01-01 00:00:00,x,a.csv,bob\r\n".encode()
    )
    assert parse_rows(data, "v.csv") == [Row("a.csv", "bob", "2021-01-01 00:00:00", md5("a"))]


def test_values_kept_exact() -> None:
    data = HEADER + f'" sp ace .csv",  NA ,2021-01-01 00:00:00,{md5("x")}\n'.encode()
    assert parse_rows(data, "v.csv") == [
        Row(" sp ace .csv", "  NA ", "2021-01-01 00:00:00", md5("x"))
    ]


def test_empty_editor_and_time_are_read_not_refused() -> None:
    # Tolerant read: the caller decides (render_rows fills the editor, refuses the time).
    data = HEADER + f"a.csv,,,{md5('a')}\n".encode()
    assert parse_rows(data, "v.csv") == [Row("a.csv", "", "", md5("a"))]


def test_unsafe_rows_are_returned_then_split() -> None:
    lines = [f"{p},bob,2021-01-01 00:00:00,{md5(p)}" for p in ["ok.csv", "../etc/passwd", ".S3/x"]]
    rows = parse_rows(HEADER + "\n".join(lines).encode() + b"\n", "v.csv")
    assert [r.path for r in rows] == ["ok.csv", "../etc/passwd", ".S3/x"]
    safe, unsafe = split_unsafe(rows)
    assert [r.path for r in safe] == ["ok.csv"]
    assert [r.path for r, _ in unsafe] == ["../etc/passwd", ".S3/x"]


# --- malformed input ---------------------------------------------------------------------

GOOD = f"a.csv,bob,2021-01-01 00:00:00,{md5('a')}"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            b"File,Edited By,Checksum\na.csv,bob,abc\n",
            "versions.csv line 1: missing column(s) 'Time Edited'",
            id="missing-column",
        ),
        pytest.param(
            (f"{HEADER.decode()}{GOOD}\n{GOOD},x,y\n").encode(),
            "versions.csv line 3: expected 4 fields, saw 6",
            id="long-row",
        ),
        pytest.param(
            (f"{HEADER.decode()}{GOOD}\r\n\r\n{GOOD}\r\na.csv,bob\r\n").encode(),
            "versions.csv line 5: expected 4 fields, saw 2",
            id="short-row-crlf",
        ),
        pytest.param(
            (f"{HEADER.decode()}0,{GOOD}\n1,{GOOD}\n").encode(),
            "versions.csv line 2: expected 4 fields, saw 5",
            id="every-row-one-too-long",
        ),
        pytest.param(
            HEADER + GOOD.encode() + b"\nr\xe9sum\xe9.csv,bob,2021-01-01 00:00:00,x\n",
            "versions.csv line 3: not UTF-8",
            id="latin-1",
        ),
        pytest.param(
            HEADER + f",bob,2021-01-01 00:00:00,{md5('a')}\n".encode(),
            "versions.csv line 2: empty File cell",
            id="empty-file-cell",
        ),
        pytest.param(
            (HEADER.decode() + GOOD + '\n"multi\nline.csv",bob,2021-01-01 00:00:00,\n').encode(),
            "versions.csv line 3: empty Checksum cell",
            id="empty-checksum-after-multiline-cell",
        ),
        pytest.param(
            (HEADER.decode() + GOOD + '\n\n"a.csv,bob,2021-01-01 00:00:00,x\n').encode(),
            "versions.csv line 4: quoted field never closed",
            id="unclosed-quote",
        ),
    ],
)
def test_malformed_tables_name_file_and_line(data: bytes, expected: str) -> None:
    with pytest.raises(MalformedTableError) as info:
        parse_rows(data, "versions.csv")
    assert expected in info.value.message
    assert isinstance(info.value, StateError)


def test_malformed_file_error_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "deletedS3.csv"
    path.write_bytes(HEADER + b"a.csv,bob\n")
    with pytest.raises(MalformedTableError, match=r"deletedS3\.csv line 2"):
        read_table_file(path)


# --- writing -----------------------------------------------------------------------------


def test_render_exact_bytes() -> None:
    rows = [
        Row("b, c.csv", "Zoë", "2021-01-02 03:04:05", "0" * 32),
        Row('q"x.csv', "", "2021-01-02 03:04:06", "a" * 32),
        Row("a.csv", "NA", "2021-01-02 03:04:07", "f" * 32),
    ]
    assert render_rows(rows) == (
        HEADER
        + b"a.csv,NA_,2021-01-02 03:04:07," + b"f" * 32 + b"\n"
        + b'"b, c.csv",Zo\xc3\xab,2021-01-02 03:04:05,' + b"0" * 32 + b"\n"
        + b'"q""x.csv",unknown,2021-01-02 03:04:06,' + b"a" * 32 + b"\n"
    )  # fmt: skip


def test_render_empty_table_is_the_header() -> None:
    assert render_rows([]) == HEADER


def test_render_sort_is_stable_and_optional() -> None:
    rows = [row("b", "x"), row("a", "first"), row("c"), row("a", "second")]
    assert [(r.path, r.edited_by) for r in parse_rows(render_rows(rows), "t")] == [
        ("a", "first"),
        ("a", "second"),
        ("b", "x"),
        ("c", "alice"),
    ]
    assert parse_rows(render_rows(rows, sort=False), "t") == rows
    assert parse_table(render_rows(rows), "t")["a"].edited_by == "second"


@pytest.mark.parametrize(
    "bad",
    [
        Row("a", "bob", "", md5("a")),
        Row("a", "bob", "NaN", md5("a")),
        Row("a", "bob", "2021-01-01 00:00:00", md5("a").upper()),
        Row("a", "bob", "2021-01-01 00:00:00", md5("a")[:31]),
        Row("a", "bob", "2021-01-01 00:00:00", ""),
        Row("", "bob", "2021-01-01 00:00:00", md5("a")),
    ],
)
def test_render_refuses_rows_the_original_would_lose(bad: Row) -> None:
    with pytest.raises(ValueError):
        render_rows([row("ok"), bad])


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("", "unknown"),
        ("NA", "NA_"),
        ("null", "null_"),
        ("None", "None_"),
        ("#N/A", "#N/A_"),
        ("<NA>", "<NA>_"),
        ("-nan", "-nan_"),
        ("1.#IND", "1.#IND_"),
        ("NA_", "NA_"),
        (" NA", " NA"),
        ("Nancy", "Nancy"),
        ("Zoë", "Zoë"),
    ],
)
def test_legacy_editor_rule(name: str, written: str) -> None:
    assert legacy_editor(name) == written


def test_na_list_covers_installed_pandas() -> None:
    parsers = importlib.import_module("pandas._libs.parsers")
    assert set(parsers.STR_NA_VALUES) <= LEGACY_NA_VALUES


def test_original_keeps_every_row_we_write(tmp_path: Path) -> None:
    editors = [*sorted(LEGACY_NA_VALUES), "Zoë", " NA ", "a, b", 'say "hi"']
    rows = [
        Row(f"dir {i}/file, {i}.csv", e, f"2021-01-01 00:00:{i:02d}", md5(str(i)))
        for i, e in enumerate(editors)
    ] + VERSIONS[:3]
    path = tmp_path / "versions.csv"
    write_table_file(path, rows)

    df = original_read(path.read_bytes())
    assert list(df.columns) == list(LEGACY_COLUMNS)
    expected = sorted(rows, key=lambda r: r.path)
    assert len(df) == len(expected)
    assert df["File"].tolist() == [r.path for r in expected]
    assert df["Edited By"].tolist() == [legacy_editor(r.edited_by) for r in expected]
    assert df["Time Edited"].tolist() == [r.time_edited for r in expected]
    assert df["Checksum"].tolist() == [r.checksum for r in expected]


def test_original_keeps_numeric_looking_paths(tmp_path: Path) -> None:
    rows = [row("1", "NA"), row("2", "null"), row("10")]
    path = tmp_path / "versions.csv"
    write_table_file(path, rows)
    df = original_read(path.read_bytes())
    # No row is lost, though the original reads the paths as numbers...
    assert len(df) == 3
    assert df["File"].astype(str).tolist() == ["1", "10", "2"]
    assert df["Edited By"].tolist() == ["NA_", "alice", "null_"]
    # ...which is why the engine is told about them.
    assert legacy_unsafe_paths(rows) == ["1", "2", "10"]


@pytest.mark.parametrize(
    ("paths", "unsafe"),
    [
        ([], []),
        (["a.csv", "b/c.csv"], []),
        (["a.csv", "null", "NA", "x/NA"], ["null", "NA"]),
        (["1", "2.5", "1e3"], ["1", "2.5", "1e3"]),
        (["True", "False"], ["True", "False"]),
        (["1", "null"], ["1", "null"]),
        (["1", "a.csv"], []),
        (["1", "1"], ["1"]),
    ],
)
def test_legacy_unsafe_paths(paths: list[str], unsafe: list[str]) -> None:
    assert legacy_unsafe_paths([row(p) for p in paths]) == unsafe


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (row("../up.csv"), "'..'"),
        (row("/abs.csv"), "absolute"),
        (row("C:/x.csv"), "absolute"),
        (row("a\\b.csv"), "backslash"),
        (row("a//b.csv"), "empty"),
        (row(".S3/versions.csv"), ".S3"),
        (Row("a.csv", "bob", "2021-01-01 00:00:00", "ABC"), "MD5"),
        (Row("a.csv", "bob", "", md5("a")), "Time Edited"),
    ],
)
def test_split_unsafe_reasons(bad: Row, reason: str) -> None:
    safe, unsafe = split_unsafe([row("ok.csv"), bad])
    assert safe == [row("ok.csv")]
    assert len(unsafe) == 1
    assert unsafe[0][0] == bad
    assert reason in unsafe[0][1]


# --- atomic writes -----------------------------------------------------------------------


def test_write_creates_folder_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / ".S3" / "versions.csv"
    write_table_file(path, VERSIONS)
    assert read_rows_file(path) == sorted(
        [dataclasses.replace(r, edited_by=legacy_editor(r.edited_by)) for r in VERSIONS],
        key=lambda r: r.path,
    )
    assert sorted(os.listdir(path.parent)) == ["versions.csv"]


def _old_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "versions.csv"
    write_table_file(path, [row("old.csv")])
    return path, path.read_bytes()


def test_failed_replace_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, old = _old_file(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StateError, match=r"versions\.csv"):
        write_table_file(path, [row("new.csv")])
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["versions.csv"]


def test_interrupted_write_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, old = _old_file(tmp_path)

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_table_file(path, [row("new.csv")])
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["versions.csv"]


def test_refused_render_leaves_file_untouched(tmp_path: Path) -> None:
    path, old = _old_file(tmp_path)
    with pytest.raises(ValueError):
        write_table_file(path, [Row("new.csv", "bob", "", md5("x"))])
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["versions.csv"]


# --- round trip (property) ---------------------------------------------------------------


def _is_safe(path: str) -> bool:
    try:
        validate_rel_path(path)
    except UnsafePathError:
        return False
    return True


_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
_SEGMENT = st.one_of(
    st.text(_TEXT.filter(lambda c: c not in "/\\"), min_size=1, max_size=12),
    st.sampled_from([" lead", "trail ", "a,b", 'q"uote', '"', "données", "résumé 1.csv", "1"]),
)
_PATH = st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join).filter(_is_safe)
_EDITOR = st.one_of(
    st.text(_TEXT, max_size=16),
    st.sampled_from(sorted(LEGACY_NA_VALUES)),
    st.sampled_from([" NA", "a, b", 'Zoë "Z"', "  "]),
)
_TIME = st.datetimes(min_value=datetime(1980, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.strftime(TIME_FORMAT)
)
_MD5 = st.binary(max_size=8).map(lambda b: hashlib.md5(b).hexdigest())
_ROW = st.builds(Row, _PATH, _EDITOR, _TIME, _MD5)


def _as_written(r: Row) -> Row:
    return dataclasses.replace(r, edited_by=legacy_editor(r.edited_by))


@settings(deadline=None)
@given(st.lists(_ROW, max_size=8))
def test_round_trip(rows: list[Row]) -> None:
    written = [_as_written(r) for r in rows]
    assert parse_rows(render_rows(rows, sort=False), "t.csv") == written
    assert parse_rows(render_rows(written), "t.csv") == sorted(written, key=lambda r: r.path)


@settings(deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=8))
def test_original_keeps_every_row_property(rows: list[Row]) -> None:
    data = render_rows(rows)
    df = original_read(data)
    assert list(df.columns) == list(LEGACY_COLUMNS)
    lost = set(legacy_unsafe_paths(rows)) & LEGACY_NA_VALUES
    assert len(df) == sum(1 for r in rows if r.path not in lost)


# --- ignore list -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "path", "expected"),
    [
        ("raw", "raw", True),
        ("raw", "raw/x.csv", True),
        ("raw", "raw/deep/x.csv", True),
        ("raw", "rawx.csv", False),
        ("raw", "data/raw", False),
        ("raw/", "raw/x.csv", True),
        ("raw\\x.csv", "raw/x.csv", True),
        ("./notes.txt", "notes.txt", True),
        ("notes.txt   ", "notes.txt", True),
        ("a b.csv", "a b.csv", True),
        ("*.tmp", "x.tmp", True),
        ("*.tmp", "a/b/x.tmp", True),
        ("*.tmp", "cache.tmp/inner.csv", True),
        ("*.tmp", "x.tmp.csv", False),
        ("*.TMP", "x.tmp", False),
        ("~$*", "docs/~$report.docx", True),
        ("data/*.csv", "data/x.csv", True),
        ("data/*.csv", "data/sub/x.csv", True),
        ("data/*.csv", "other/data/x.csv", False),
        ("data/*", "data/sub/x.csv", True),
        ("**/build/*.o", "src/build/a.o", True),
        ("**/build/*.o", "build/a.o", True),
        ("**/build/*.o", "build.o", False),
        ("file?.csv", "file1.csv", True),
        ("file?.csv", "file10.csv", False),
        ("[ab].csv", "b.csv", True),
        ("[ab].csv", "c.csv", False),
        ("# comment", "# comment", False),
        ("", "anything", False),
    ],
)
def test_ignore_rules(entry: str, path: str, expected: bool) -> None:
    assert parse_ignores(entry + "\n").matches(path) is expected


def test_read_ignores_file(tmp_path: Path) -> None:
    path = tmp_path / "ignores3.txt"
    path.write_bytes(
        b"\xef\xbb\xbf# local scratch\r\nscratch.csv  \r\n\r\n*.bak\r\nraw\\big\r\n"
        + "données/résumé.csv\n".encode()
    )
    rules = read_ignores(path)
    assert rules == IgnoreRules(
        frozenset({"scratch.csv", "raw/big", "données/résumé.csv"}), ("*.bak",)
    )
    assert rules.matches("raw/big/part1.csv")
    assert rules.matches("données/résumé.csv")
    assert not rules.matches("scratch.csv.bak.txt")


def test_missing_ignores_match_nothing(tmp_path: Path) -> None:
    rules = read_ignores(tmp_path / "ignores3.txt")
    assert not rules
    assert not rules.matches("a.csv")


def test_ignores_not_utf8_is_state_error(tmp_path: Path) -> None:
    path = tmp_path / "ignores3.txt"
    path.write_bytes(b"a.csv\nr\xe9sum\xe9.csv\n")
    with pytest.raises(StateError, match=r"ignores3\.txt line 2"):
        read_ignores(path)


def test_ignore_rules_are_frozen_with_slots() -> None:
    rules = parse_ignores("a\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.exact = frozenset()  # type: ignore[misc]
    assert not hasattr(rules, "__dict__")
