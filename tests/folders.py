"""Looking at data folders from tests: file MD5s and whole-tree snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path -> MD5 of every user file (the state folder left out)."""
    return {
        p.relative_to(root).as_posix(): md5(p)
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".S3/")
    }


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
