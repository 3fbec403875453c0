"""Terminal prompts for the one-shot sync (``smart_sync`` / ``s3syncd sync``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from s3syncd.errors import ConfigError
from s3syncd.model import Action, ActionKind, Resolution, shown

Ask = Callable[[str], str]
Say = Callable[[str], None]

GROUP_TITLES = {
    ActionKind.UPLOAD: "Upload to the remote",
    ActionKind.DOWNLOAD: "Download from the remote",
    ActionKind.DELETE_REMOTE: "Delete on the remote (a copy is kept in .S3/deleted/)",
    ActionKind.DELETE_LOCAL: "Delete locally (the file is moved to .S3/trash/)",
    ActionKind.CONFLICT: "Conflicts (changed on both sides)",
    ActionKind.MOVE: "Move on the remote (renamed locally; nothing is uploaded, the old "
    "name's copy is kept in .S3/deleted/)",
}


def human_size(size: int | None) -> str:
    if size is None or size < 0:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def describe(action: Action) -> str:
    return f"{shown_path(action)}  [{human_size(action.size)}]  {action.reason}"


def shown_path(action: Action) -> str:
    """The path as shown to a person: ``old -> new`` for a move."""
    if action.source is not None:
        return f"{shown(action.source.path)} -> {shown(action.path)}"
    return shown(action.path)


def parse_selection(answer: str, count: int) -> list[int] | None:
    """'all', '' (none), or 1-based numbers and ranges like '1,3-5'. None if invalid."""
    answer = answer.strip().lower()
    if answer in ("", "n", "none"):
        return []
    if answer in ("a", "all", "y", "yes"):
        return list(range(count))
    chosen: set[int] = set()
    for part in answer.replace(" ", ",").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            return None
        start, end = int(lo), int(hi) if dash else int(lo)
        if not 1 <= start <= end <= count:
            return None
        chosen.update(range(start - 1, end))
    return sorted(chosen)


def choose(actions: Sequence[Action], kind: ActionKind, ask: Ask, say: Say) -> list[Action]:
    """Show one group and ask which to approve: all, some by number, or none."""
    say(f"\n{GROUP_TITLES[kind]}:")
    for i, a in enumerate(actions, 1):
        say(f"  {i:>3}. {describe(a)}")
    while True:
        picked = parse_selection(
            ask("Approve which? [all / numbers like 1,3-5 / Enter for none]: "), len(actions)
        )
        if picked is not None:
            return [actions[i] for i in picked]
        say(f"  Please answer 'all', nothing, or numbers between 1 and {len(actions)}.")


def resolve(action: Action, ask: Ask, say: Say) -> Resolution | None:
    say(f"\nConflict: {describe(action)}")
    while True:
        answer = ask("Keep [b]oth (default), [l]ocal, [r]emote, or [s]kip? ").strip().lower()
        if answer in ("", "b", "both"):
            return Resolution.BOTH
        if answer in ("l", "local"):
            return Resolution.LOCAL
        if answer in ("r", "remote"):
            return Resolution.REMOTE
        if answer in ("s", "skip"):
            return None
        say("  Please answer b, l, r or s.")


def confirm(question: str, ask: Ask) -> bool:
    return ask(f"{question} (y/N): ").strip().lower() in ("y", "yes")


def confirm_reset(question: str, flag: str = "--yes") -> bool:
    """Ask on the terminal before a reset; without one, refuse rather than guess."""
    if not sys.stdin.isatty():
        raise ConfigError(f"reset needs confirmation: run it on a terminal or pass {flag}")
    return confirm(question, input)
