"""``s3syncctl``: talk to a running s3syncd over its control socket (a client only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3syncd.errors import (
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    SyncError,
)
from s3syncd.model import APPROVABLE_KINDS, shown

EPILOG = """\
exit codes:
  0  ok
  1  error (the daemon refused or an action failed)
  2  usage error
  3  the daemon is not running

The socket is found from the config (--config, $S3SYNCD_CONFIG or ./s3syncd.toml):
$XDG_RUNTIME_DIR/s3syncd/<name>.sock, else <datafolder>/.S3/s3syncd.sock.
"""


SKIPPED_SHOWN = 20


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3syncctl",
        description="Control a running s3syncd: see what waits for approval, approve or "
        "reject it, resolve conflicts, trigger a sync.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", type=Path, help="the folder's config file")
    p.add_argument("--socket", type=Path, help="the daemon's control socket (instead of --config)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("status", help="connected? last poll, counts, errors, paused?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("pending", help="the approval queue")
    s.add_argument("--json", action="store_true", help="machine-readable output (a JSON array)")
    s = sub.add_parser("approve", help="approve actions by id, or --all [--kind K]")
    s.add_argument("ids", nargs="*", metavar="ID")
    s.add_argument("--all", action="store_true", help="approve everything pending")
    s.add_argument(
        "--kind", choices=[k.value for k in APPROVABLE_KINDS], help="with --all: only this kind"
    )
    s.add_argument("--no-wait", action="store_true", help="return without waiting for transfers")
    s = sub.add_parser("reject", help="keep my side; not proposed again until the file changes")
    s.add_argument("ids", nargs="+", metavar="ID")
    s = sub.add_parser("resolve", help="resolve a conflict")
    s.add_argument("id", metavar="ID")
    s.add_argument(
        "--keep",
        required=True,
        choices=["local", "remote", "both"],
        help="which version wins; 'both' keeps the local one as a .conflict- copy",
    )
    s.add_argument("--no-wait", action="store_true", help="return without waiting")
    sub.add_parser("sync", help="rescan the folder and poll the remote now")
    sub.add_parser("pause", help="stop syncing until resume (changes are still noticed)")
    sub.add_parser("resume", help="resume syncing")
    s = sub.add_parser("reset", help="remove sync state locally and on the remote, then stop")
    s.add_argument("--yes", "-y", action="store_true", help="do not ask")
    s.add_argument(
        "--purge-deleted",
        action="store_true",
        help="also remove soft-deleted copies under .S3/deleted/ on the remote",
    )
    s = sub.add_parser("log", help="the daemon's recent log lines")
    s.add_argument("-n", type=int, default=50, help="number of lines (default 50)")
    s = sub.add_parser("service", help="install the systemd user unit / launchd agent")
    ssub = s.add_subparsers(dest="service_command", metavar="SUBCOMMAND")
    ssub.required = True
    i = ssub.add_parser("install", help="write the unit for this config and print how to enable it")
    i.add_argument("--dry-run", action="store_true", help="print the files instead of writing")
    i.add_argument("--force", action="store_true", help="overwrite a different existing unit")
    return p


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return Path(os.environ.get("S3SYNCD_CONFIG", "s3syncd.toml"))


def socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    from s3syncd.config import load_config
    from s3syncd.server import default_socket_path

    cfg = load_config(_config_path(args))
    if cfg.daemon.socket is not None:
        return cfg.daemon.socket
    return default_socket_path(cfg.name, cfg.state_dir, os.environ)


class Ctl:
    def __init__(self, path: Path, timeout: float) -> None:
        from s3syncd.client import ControlClient

        self.client = ControlClient(path, timeout=timeout)
        self.client.hello()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.client.call(method, params or {})

    def close(self) -> None:
        self.client.close()


def _human_size(size: Any) -> str:
    from s3syncd.interactive import human_size

    return human_size(size if isinstance(size, int) else None)


def show_status(st: dict[str, Any]) -> None:
    _out(f"s3syncd {st['name']}: {st['state']}")
    _out(f"  folder      {st['datafolder']}")
    _out(f"  remote      {st['remote']} (as {st['user']})")
    link = "connected" if st.get("connected", True) else "NOT CONNECTED"
    _out(f"  last poll   {st['last_poll'] or 'never'} ({st['last_poll_result']}; {link})")
    _out(
        f"  pending     {st['pending']} waiting for approval, {st['approved']} approved, "
        f"{st['failed']} failed"
    )
    counts = st.get("counts", {})
    _out(
        f"  files       {counts.get('local_files', 0)} local, "
        f"{counts.get('remote_files', 0)} remote, {counts.get('skipped', 0)} skipped"
    )
    if not st.get("conditional_writes", True):
        _out("  WARNING     the remote ignores conditional writes; using read-back checks")
    if st.get("held"):
        _out(f"  HELD        {st['held']}")
    tr = st.get("transfers", {})
    if tr.get("active"):
        _out(
            f"  transfers   {len(tr['active'])} running, "
            f"{_human_size(tr['bytes_done'])} of {_human_size(tr['bytes_total'])}"
        )
    skipped = st.get("skipped") or []
    if skipped:
        _out(f"  not synced  {len(skipped)}:")
        for item in skipped[:SKIPPED_SHOWN]:
            _out(f"    {shown(item['path'])}  ({shown(item['reason'])})")
        if len(skipped) > SKIPPED_SHOWN:
            _out(f"    ... and {len(skipped) - SKIPPED_SHOWN} more (see 'status --json')")
    errors = st.get("errors", [])
    if errors:
        _out(f"  errors      {len(errors)} (latest last):")
        for e in errors[-5:]:
            _out(f"    {e['time']}  {shown(e['message'])}")


def show_pending(items: list[dict[str, Any]]) -> None:
    if not items:
        _out("Nothing waits for approval.")
        return
    rows = [("ID", "ACTION", "PATH", "SIZE", "WHO", "WHEN", "WHY")]
    for it in items:
        state = "" if it["state"] == "pending" else f" ({it['state']})"
        rows.append(
            (
                it["id"],
                it["kind"] + state,
                # A move shows its old name too: "old/path -> new/path".
                f"{shown(it['source'])} -> {shown(it['path'])}"
                if it.get("source")
                else shown(it["path"]),
                _human_size(it["size"]),
                shown(it["edited_by"] or "-"),
                (it["queued_at"] or "")[:19].replace("T", " "),
                shown(it["error"] or it["reason"]),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    for r in rows:
        _out("  ".join(str(c).ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6])


def wait_for(ctl: Ctl, ids: list[str], timeout: float | None = None) -> int:
    """Wait until the approved actions ran; draw a progress bar on a terminal."""
    if not ids:
        return EXIT_OK
    tty = sys.stderr.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        st = ctl.call("status", {"ids": ids})
        states = {i: a["state"] for i, a in st["actions"].items()}
        if tty:
            tr = st["transfers"]
            total = max(tr["bytes_total"], 1)
            frac = min(tr["bytes_done"] / total, 1.0)
            bar = "#" * int(frac * 30)
            done = sum(1 for s in states.values() if s not in ("approved", "running"))
            sys.stderr.write(
                f"\r[{bar:<30}] {done}/{len(ids)} actions, "
                f"{_human_size(tr['bytes_done'])}/{_human_size(tr['bytes_total'])}"
            )
            sys.stderr.flush()
        if all(s not in ("approved", "running") for s in states.values()):
            break
        if deadline is not None and time.monotonic() > deadline:
            if tty:
                sys.stderr.write("\n")
            _out("still running; see 's3syncctl status'")
            return EXIT_OK
        time.sleep(0.2)  # polling the daemon for progress is the point here
    if tty:
        sys.stderr.write("\n")
    failed = 0
    for i, a in st["actions"].items():
        _out(f"{i}: {a['state']}{': ' + a['message'] if a['message'] else ''}")
        failed += a["state"] == "failed"
    return EXIT_ERROR if failed else EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    if args.command == "service":
        return service_install(args)
    ctl = Ctl(socket_path(args), args.timeout)
    try:
        return _dispatch(ctl, args)
    finally:
        ctl.close()


def _dispatch(ctl: Ctl, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "status":
        st = ctl.call("status")
        if args.json:
            _out(json.dumps(st, indent=1))
        else:
            show_status(st)
        return EXIT_OK
    if cmd == "pending":
        items = ctl.call("pending")
        if args.json:
            _out(json.dumps(items, indent=1))
        else:
            show_pending(items)
        return EXIT_OK
    if cmd == "approve":
        if not args.ids and not args.all:
            raise SyncError("name action ids, or pass --all")
        if args.ids and args.all:
            raise SyncError("pass either ids or --all, not both")
        res = ctl.call("approve", {"ids": args.ids, "all": args.all, "kind": args.kind})
        _out(f"approved {len(res['approved'])} action(s)")
        if res["held"]:
            _out(
                f"held back {len(res['held'])} deletion(s): a mass delete needs "
                "'--all --kind delete_remote/delete_local' or explicit ids"
            )
        return EXIT_OK if args.no_wait else wait_for(ctl, res["approved"])
    if cmd == "resolve":
        res = ctl.call("resolve", {"id": args.id, "keep": args.keep})
        return EXIT_OK if args.no_wait else wait_for(ctl, res["approved"])
    if cmd == "reject":
        res = ctl.call("reject", {"ids": args.ids})
        _out(
            f"rejected {len(res['rejected'])} action(s); they come back only if the file "
            "changes again"
        )
        return EXIT_OK
    if cmd == "sync":
        res = ctl.call("sync")
        _out(f"synced; {res['pending']} action(s) in the queue")
        return EXIT_OK
    if cmd in ("pause", "resume"):
        _out(ctl.call(cmd)["state"])
        return EXIT_OK
    if cmd == "reset":
        from s3syncd.interactive import confirm_reset

        question = "Remove all sync state locally and on the remote?"
        if not args.yes and not confirm_reset(question):
            _out("Reset cancelled.")
            return EXIT_OK
        res = ctl.call("reset", {"yes": True, "purge_deleted": args.purge_deleted})
        for item in res["removed"]:
            _out(f"removed {item}")
        _out("the daemon is stopping; start it again to sync afresh")
        return EXIT_OK
    if cmd == "log":
        for line in ctl.call("log", {"n": args.n})["lines"]:
            _out(line)
        return EXIT_OK
    raise SyncError(f"unknown command {cmd}")


def service_install(args: argparse.Namespace) -> int:
    from s3syncd import service
    from s3syncd.config import load_config

    path = _config_path(args).expanduser().resolve()
    cfg = load_config(path)
    files, enable = service.plan_install(
        path, cfg.name, system=sys.platform, home=Path.home(), exe=service.default_exe()
    )
    service.install(files, dry_run=args.dry_run, out=_out, force=args.force, enable_command=enable)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return run_command(args)
    except SyncError as exc:
        sys.stderr.write(f"s3syncctl: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_ERROR


__all__ = ["EXIT_NOT_RUNNING", "main"]
