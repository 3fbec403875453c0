"""The library API kept from the original package, plus the one-shot pass behind it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from s3syncd import approvals, interactive
from s3syncd import remote as platforms
from s3syncd.config import Config, Policy, load_config, read_legacy_credentials, resolve_user_name
from s3syncd.engine import Engine
from s3syncd.errors import ConfigError
from s3syncd.model import (
    APPROVABLE_KINDS,
    DELETE_KINDS,
    POLICY_KINDS,
    Action,
    ActionKind,
    Resolution,
    shown,
)
from s3syncd.remote.base import STATE_PREFIX, TRASH_PREFIX, Remote
from s3syncd.state import StateDir

log = logging.getLogger(__name__)

Say = Callable[[str], None]
Ask = Callable[[str], str]


class TransferMeter(Protocol):
    """Shows a pass's transfers as they go (a progress bar in the CLI)."""

    def advance(self, nbytes: int) -> None: ...

    def file_done(self) -> None: ...


# Given the approved actions, a context in which to meter their transfers.
MeterFactory = Callable[[Sequence[Action]], AbstractContextManager[TransferMeter]]


def _stdout(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def get_supported_platforms() -> list[str]:
    """Names accepted as ``platform=``: built-ins first, then entry-point plugins."""
    return platforms.platform_names()


def build_remote(cfg: Config) -> Remote:
    settings = dict(cfg.platform_settings)
    if cfg.platform == "S3" and "credentials" not in settings:
        creds = read_legacy_credentials(cfg.state_dir)
        if creds:
            settings["credentials"] = creds
    return platforms.platform_class(cfg.platform).from_config(settings)


def build_engine(cfg: Config, ask_name: bool | None = None) -> Engine:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    user = resolve_user_name(cfg, ask=ask_name)
    return Engine(cfg, build_remote(cfg), user)


@dataclass(slots=True)
class SyncSummary:
    """The result of one pass: what was planned, done, skipped and failed."""

    planned: list[Action] = field(default_factory=list)
    done: list[tuple[Action, str]] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    not_approved: list[Action] = field(default_factory=list)
    held: str | None = None
    commit_error: str | None = None
    skipped_files: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and self.commit_error is None

    def conflicts(self) -> list[Action]:
        return [a for a in self.planned if a.kind is ActionKind.CONFLICT]


Approval = list[tuple[Action, Resolution | None]]


def choose_actions(
    actions: Sequence[Action],
    policy: Policy,
    brake: approvals.DeleteBrake,
    auto: frozenset[ActionKind],
    ask: Ask | None,
    say: Say,
) -> tuple[Approval, list[Action]]:
    """Split into (approved with resolutions, not approved), asking on a terminal."""
    approved: Approval = []
    waiting: list[Action] = []
    merged = Policy(policy.auto_approve | auto, policy.max_delete_percent)
    for a in actions:
        if approvals.auto_approved(a, merged, brake):
            approved.append((a, Resolution.BOTH if a.kind is ActionKind.CONFLICT else None))
        else:
            waiting.append(a)
    if ask is None or not waiting:
        return approved, waiting
    left: list[Action] = []
    if brake.engaged:
        say(f"\nWARNING: {brake.describe()}.")
    for kind in APPROVABLE_KINDS:
        group = [a for a in waiting if a.kind is kind]
        if not group:
            continue
        if kind is ActionKind.CONFLICT:
            for a in group:
                res = interactive.resolve(a, ask, say)
                if res is None:
                    left.append(a)
                else:
                    approved.append((a, res))
            continue
        picked = interactive.choose(group, kind, ask, say)
        if (
            picked
            and kind in DELETE_KINDS
            and not interactive.confirm(f"Really delete {len(picked)} file(s)?", ask)
        ):
            picked = []
        approved += [(a, None) for a in picked]
        left += [a for a in group if a not in picked]
    return approved, left


def run_once(
    cfg: Config,
    *,
    auto: Iterable[ActionKind] = (),
    dry_run: bool = False,
    ask: Ask | None = None,
    say: Say = _stdout,
    engine: Engine | None = None,
    meter: MeterFactory | None = None,
) -> SyncSummary:
    """One full pass: scan, read the manifest and a listing, plan, approve, execute."""
    eng = engine or build_engine(cfg, ask_name=ask is not None)
    try:
        return _pass(eng, cfg, auto=auto, dry_run=dry_run, ask=ask, say=say, meter=meter)
    finally:
        if engine is None:
            eng.remote.close()


def _pass(
    eng: Engine,
    cfg: Config,
    *,
    auto: Iterable[ActionKind],
    dry_run: bool,
    ask: Ask | None,
    say: Say,
    meter: MeterFactory | None = None,
) -> SyncSummary:
    say(f"s3syncd: {cfg.datafolder} <-> {eng.remote.describe()} as {eng.user}")
    eng.prepare(dry_run=dry_run)
    scan = eng.scan_local()
    eng.refresh_remote(listing=True, force=True)
    plan = eng.plan()
    summary = SyncSummary(planned=list(plan.actions), skipped_files=dict(scan.skipped))
    for path, why in sorted(scan.skipped.items()):
        say(f"  skipped {shown(path)}: {shown(why)}")
    visible = [a for a in plan.actions if a.kind is not ActionKind.RECORD]
    if not plan.actions:
        if not dry_run:
            eng.apply_agreement(plan)
        say("Everything is in sync.")
        return summary
    counts = ", ".join(
        f"{sum(1 for a in visible if a.kind is k)} {k.value}"
        for k in APPROVABLE_KINDS
        if any(a.kind is k for a in visible)
    )
    say(f"Planned: {counts or 'manifest bookkeeping only'}")
    total = max(len(eng.base), len(scan.files))
    brake = approvals.delete_brake(plan.actions, total, cfg.policy)
    if brake.engaged:
        summary.held = brake.describe()
    if dry_run:
        for a in visible:
            say(f"  would {a.kind.value}: {interactive.describe(a)}")
        return summary
    eng.apply_agreement(plan)
    approved, left = choose_actions(plan.actions, cfg.policy, brake, frozenset(auto), ask, say)
    summary.not_approved = [a for a in left if a.kind is not ActionKind.RECORD]

    metered: AbstractContextManager[TransferMeter | None] = (
        meter([a for a, _ in approved]) if meter and approved else nullcontext(None)
    )
    with metered as bar:

        def report(out: Any) -> None:
            mark = "ok " if out.ok else "ERR"
            if bar is not None:
                bar.file_done()
            if out.action.kind is not ActionKind.RECORD or not out.ok:
                what = f"{interactive.shown_path(out.action)}: {shown(out.message)}"
                say(f"  [{mark}] {out.action.kind.value:<13} {what}")

        progress = bar.advance if bar is not None else None
        result = eng.execute(approved, progress=progress, on_outcome=report)
    summary.done = [(o.action, o.message) for o in result.done]
    summary.failed = [(o.action, o.message) for o in result.failed]
    summary.commit_error = result.commit_error
    if summary.not_approved:
        say(f"{len(summary.not_approved)} action(s) not approved; run again to review them.")
        if summary.held:
            say(f"Held: {summary.held}.")
    if summary.commit_error:
        say(f"The manifest could not be updated: {summary.commit_error}")
    for a in summary.conflicts():
        say(f"Conflict on {shown(a.path)}: {a.reason}")
    return summary


def _settings(
    platform: str,
    aws_bkt: str | None,
    aws_prfx: str | None,
    datafolder: str | Path,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    values: dict[str, Any] = {"platform": platform, "datafolder": str(datafolder)}
    if aws_bkt is not None:
        values["s3.bucket"] = aws_bkt
    if aws_prfx is not None:
        values["s3.prefix"] = aws_prfx
    aliases = {
        "endpoint_url": "s3.endpoint_url",
        "region": "s3.region",
        "profile": "s3.profile",
        "remote_path": "local.remote_path",
        "user_name": "user_name",
        "max_delete_percent": "policy.max_delete_percent",
    }
    for key, value in extra.items():
        if key not in aliases:
            raise ConfigError(f"unknown keyword argument {key!r}")
        values[aliases[key]] = value
    return values


def _auto_kinds(auto_approve: bool | Iterable[str]) -> frozenset[ActionKind]:
    if auto_approve is True:
        return frozenset(APPROVABLE_KINDS)
    if auto_approve is False:
        return frozenset()
    names = {k.value: k for k in POLICY_KINDS}
    try:
        return frozenset(names[str(n)] for n in auto_approve)
    except KeyError as exc:
        raise ConfigError(f"unknown action kind {exc.args[0]!r}") from None


def smart_sync(
    platform: str = "S3",
    aws_bkt: str | None = None,
    aws_prfx: str | None = None,
    datafolder: str | Path = "Data",
    *,
    auto_approve: bool | Iterable[str] = False,
    dry_run: bool = False,
    config: str | Path | None = None,
    **settings: Any,
) -> SyncSummary:
    """Synchronise once, asking on the terminal like the original.

    ``auto_approve=True`` approves everything (conflicts keep both copies), or pass a list
    of kinds (``"upload"``, ``"download"``, ``"delete_remote"``, ``"delete_local"``,
    ``"conflict"``); a move (a local rename) is approved when both ``"upload"`` and
    ``"delete_remote"`` are. Without a terminal, unapproved actions are left for the next run.
    """
    values = {} if config else _settings(platform, aws_bkt, aws_prfx, datafolder, settings)
    cfg = load_config(Path(config) if config else None, values)
    ask: Ask | None = input if sys.stdin.isatty() else None
    return run_once(cfg, auto=_auto_kinds(auto_approve), dry_run=dry_run, ask=ask)


def reset(cfg: Config, *, purge_deleted: bool = False, remote: Remote | None = None) -> list[str]:
    """Remove sync state locally and on the remote; data files are never touched.

    Kept: ``ignores3.txt``, ``user_name.txt``, ``aws.txt``, logs, the local trash and
    (unless ``purge_deleted``) the soft-deleted copies under ``.S3/deleted/`` on the remote.
    Returns what was removed.
    """
    rem = remote or build_remote(cfg)
    try:
        return _reset(cfg, rem, purge_deleted)
    finally:
        if remote is None:
            rem.close()


def _reset(cfg: Config, rem: Remote, purge_deleted: bool) -> list[str]:
    removed: list[str] = []
    for key in sorted(rem.list(STATE_PREFIX)):
        full = STATE_PREFIX + key if not key.startswith(STATE_PREFIX) else key
        if full.startswith(TRASH_PREFIX) and not purge_deleted:
            continue
        rem.delete(full)
        removed.append(f"remote {full}")
    removed += [f"local {name}" for name in StateDir(cfg.datafolder).remove_sync_state()]
    log.info("reset: removed %d item(s)", len(removed))
    return removed


def reset_all(
    platform: str = "S3",
    aws_bkt: str | None = None,
    aws_prfx: str | None = None,
    datafolder: str | Path = "Data",
    *,
    yes: bool = False,
    purge_deleted: bool = False,
    config: str | Path | None = None,
    **settings: Any,
) -> bool:
    """Remove all sync state after confirmation (like the original). True if reset."""
    values = {} if config else _settings(platform, aws_bkt, aws_prfx, datafolder, settings)
    cfg = load_config(Path(config) if config else None, values)
    rem = build_remote(cfg)
    try:
        question = f"Remove all sync state in {cfg.state_dir} and on {rem.describe()}?"
        if not yes and not interactive.confirm_reset(question, flag="yes=True"):
            _stdout("Reset cancelled.")
            return False
        for item in reset(cfg, purge_deleted=purge_deleted, remote=rem):
            _stdout(f"removed {item}")
    finally:
        rem.close()
    return True
