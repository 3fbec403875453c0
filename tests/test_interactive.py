"""The one-shot sync's terminal prompts, answered by a script."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s3syncd import approvals, interactive
from s3syncd.api import choose_actions
from s3syncd.config import Policy
from s3syncd.model import Action, ActionKind, LocalFile, Resolution


def act(kind: ActionKind, path: str) -> Action:
    return Action(kind, path, "why", LocalFile(path, 3, 1, "a" * 32), None, None, None)


def answers(*replies: str) -> tuple[interactive.Ask, list[str]]:
    it: Iterator[str] = iter(replies)
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return next(it)

    return ask, asked


@pytest.mark.parametrize(
    ("answer", "count", "expected"),
    [
        ("", 3, []),
        ("none", 3, []),
        ("all", 3, [0, 1, 2]),
        ("1,3", 3, [0, 2]),
        ("1-2", 3, [0, 1]),
        ("2 3", 3, [1, 2]),
        ("0", 3, None),
        ("4", 3, None),
        ("1-3-5", 3, None),
        ("x", 3, None),
        ("3-1", 3, None),
    ],
)
def test_parse_selection(answer: str, count: int, expected: list[int] | None) -> None:
    assert interactive.parse_selection(answer, count) == expected


def test_groups_are_asked_in_turn_and_bad_answers_ask_again() -> None:
    actions = [
        act(ActionKind.UPLOAD, "a.txt"),
        act(ActionKind.UPLOAD, "b.txt"),
        act(ActionKind.DOWNLOAD, "c.txt"),
        act(ActionKind.DELETE_REMOTE, "d.txt"),
        act(ActionKind.CONFLICT, "e.txt"),
    ]
    ask, asked = answers("1-3", "2", "", "all", "n", "x", "l")
    said: list[str] = []
    brake = approvals.delete_brake(actions, 10, Policy())
    approved, left = choose_actions(actions, Policy(), brake, frozenset(), ask, said.append)
    # uploads: "1-3" is out of range, asked again, "2"; downloads: none; the delete is
    # chosen but not confirmed; the conflict: "x" is asked again, then "l".
    assert [(a.path, r) for a, r in approved] == [("b.txt", None), ("e.txt", Resolution.LOCAL)]
    assert [a.path for a in left] == ["a.txt", "c.txt", "d.txt"]
    assert any("Please answer" in s for s in said)
    assert len(asked) == 7


def test_without_a_terminal_nothing_is_approved_but_policy_kinds() -> None:
    actions = [act(ActionKind.UPLOAD, "a.txt"), act(ActionKind.DOWNLOAD, "b.txt")]
    policy = Policy(auto_approve=frozenset({ActionKind.DOWNLOAD}))
    brake = approvals.delete_brake(actions, 2, policy)
    approved, left = choose_actions(actions, policy, brake, frozenset(), None, print)
    assert [a.path for a, _ in approved] == ["b.txt"]
    assert [a.path for a in left] == ["a.txt"]
