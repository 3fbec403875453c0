"""s3syncctl diff's comparison: tables by key or position, text as a unified diff, binary."""

from __future__ import annotations

import json
from pathlib import Path

from s3syncd.diffing import DiffKind, compare, compare_tables, compare_text


def write(tmp: Path, name: str, data: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


OLD_CSV = "id,name,qty\n1,apple,3\n2,pear,5\n3,plum,7\n"
# One row changed (pear's qty), one row added (fig).
NEW_CSV = "id,name,qty\n1,apple,3\n2,pear,6\n3,plum,7\n4,fig,1\n"


def test_a_changed_and_an_added_row_are_exactly_that_by_key(tmp_path: Path) -> None:
    d = compare("fruit.csv", write(tmp_path, "a.csv", OLD_CSV), write(tmp_path, "b.csv", NEW_CSV))
    assert d.kind is DiffKind.TABLE and d.table is not None
    t = d.table
    assert (t.key, t.added, t.removed, t.changed) == ("id", 1, 0, 1)
    assert [(c.row, c.column, c.old, c.new) for c in t.cells_sample] == [("2", "qty", "5", "6")]
    assert t.added_sample == ({"id": "4", "name": "fig", "qty": "1"},)
    text = d.render()
    assert "rows added 1, removed 0, changed 1" in text
    assert "row 2, qty: '5' -> '6'" in text
    assert json.loads(json.dumps(d.to_json()))["table"]["rows_changed"] == 1


def test_without_a_unique_key_rows_are_matched_by_position(tmp_path: Path) -> None:
    old = "a,b\nx,1\nx,1\ny,2\n"
    new = "a,b\nx,1\nz,9\nx,1\ny,3\n"  # a row inserted, the last one changed
    t = compare_tables(write(tmp_path, "a.csv", old), write(tmp_path, "b.csv", new))
    assert t.key is None
    assert (t.added, t.removed, t.changed) == (1, 0, 1)
    assert [(c.row, c.column, c.old, c.new) for c in t.cells_sample] == [("#4", "b", "2", "3")]


def test_columns_added_and_removed(tmp_path: Path) -> None:
    old = "id,x,gone\n1,a,q\n2,b,r\n"
    new = "id,x,extra\n1,a,n\n2,b,m\n"
    t = compare_tables(write(tmp_path, "a.csv", old), write(tmp_path, "b.csv", new))
    assert t.columns_added == ("extra",) and t.columns_removed == ("gone",)
    assert (t.added, t.removed, t.changed) == (0, 0, 0)


def test_tsv_uses_tabs_and_cells_stay_text(tmp_path: Path) -> None:
    d = compare(
        "t.tsv",
        write(tmp_path, "a.tsv", "k\tv\n1\t1.0\n"),
        write(tmp_path, "b.tsv", "k\tv\n1\t1\n"),
    )
    assert d.table is not None and d.table.changed == 1
    assert d.table.cells_sample[0].old == "1.0"


def test_a_deleted_table_is_every_row_removed(tmp_path: Path) -> None:
    d = compare("f.csv", write(tmp_path, "a.csv", OLD_CSV), None, "remote", "after delete")
    assert d.table is not None and d.table.removed == 3 and not d.new.exists
    assert "(no file)" in d.render()


def test_text_is_a_unified_diff_truncated_with_a_count(tmp_path: Path) -> None:
    d = compare("notes.txt", write(tmp_path, "a", "one\ntwo\n"), write(tmp_path, "b", "one\nTWO\n"))
    assert d.kind is DiffKind.TEXT and d.text is not None
    assert "-two" in d.text.lines and "+TWO" in d.text.lines and d.text.truncated == 0
    old = "".join(f"line {i}\n" for i in range(1000))
    t = compare_text(old.encode(), b"", "a", "b", max_lines=50)
    assert t is not None and len(t.lines) == 50 and t.truncated == 1003 - 50
    assert (
        "953 more diff lines"
        in compare(
            "x.txt", write(tmp_path, "c", old), write(tmp_path, "d", ""), max_lines=50
        ).render()
    )


def test_binary_shows_sizes_and_md5s(tmp_path: Path) -> None:
    d = compare("x.bin", write(tmp_path, "a", b"\0\1\2"), write(tmp_path, "b", b"\0\1\3\4"))
    assert d.kind is DiffKind.BINARY
    assert (d.old.size, d.new.size) == (3, 4) and d.old.md5 != d.new.md5
    assert "binary files differ" in d.render()


def test_identical_content(tmp_path: Path) -> None:
    d = compare("x.csv", write(tmp_path, "a", "a\n1\n"), write(tmp_path, "b", "a\n1\n"))
    assert d.kind is DiffKind.IDENTICAL


def test_a_malformed_csv_falls_back_to_text(tmp_path: Path) -> None:
    d = compare("x.csv", write(tmp_path, "a", 'a,b\n"1,2\n'), write(tmp_path, "b", "a,b\n1,2\n"))
    assert d.kind is DiffKind.TEXT and "compared as text" in d.note


def test_huge_files_are_only_summarised(tmp_path: Path) -> None:
    d = compare(
        "x.csv", write(tmp_path, "a", "a\n1\n"), write(tmp_path, "b", "a\n2\n"), max_bytes=2
    )
    assert d.kind is DiffKind.BINARY and "larger than" in d.note


def test_big_text_gets_no_line_diff(tmp_path: Path) -> None:
    d = compare(
        "x.log", write(tmp_path, "a", "a\n" * 50), write(tmp_path, "b", "b\n"), max_text_bytes=10
    )
    assert d.kind is DiffKind.BINARY and "no line diff" in d.note
    assert "no line diff" in d.render()


def test_parquet_without_pyarrow_is_not_parsed(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is not None:
        return
    d = compare("x.parquet", write(tmp_path, "a", b"PAR1\0"), write(tmp_path, "b", b"PAR1\1"))
    assert d.kind is DiffKind.BINARY and "pyarrow" in d.note
