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

from s3syncd.display import human_size as _human_size
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
    s = sub.add_parser("watch", help="live view of the queue, transfers and events (q quits)")
    s.add_argument("--once", action="store_true", help="print one frame and exit")
    s.add_argument(
        "--interval", type=float, default=0.5, help="seconds between frames (default 0.5)"
    )
    s = sub.add_parser("log", help="the daemon's recent log lines")
    s.add_argument("-n", type=int, default=50, help="number of lines (default 50)")
    s = sub.add_parser(
        "diff",
        help="show what a pending action would change (table, text or binary comparison)",
        description="Compare the two versions a pending action involves: for an upload the "
        "remote object -> your file; for a download or conflict your file -> the remote "
        "object; for a delete the file -> nothing. CSV/TSV files are compared as tables "
        "(rows added/removed/changed, by a unique key column or by position; Parquet and "
        "Excel too with pyarrow/openpyxl installed), text as a unified diff, anything else "
        "by size and MD5. Nothing changes: the remote copy is fetched to .S3/tmp and removed.",
    )
    s.add_argument("id", metavar="ID", help="the action's id (or a unique prefix) from 'pending'")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser(
        "history",
        help="who changed a file when, as far as this folder has seen it",
        description="The changes of PATH this folder has seen (others' commits read from the "
        "manifest, and our own), newest first, from .S3/sync-history.log; plus the S3 object "
        "versions where the bucket has versioning on.",
    )
    s.add_argument("path", metavar="PATH", help="the file's path relative to the data folder")
    s.add_argument("-n", type=int, default=None, help="at most this many entries")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser(
        "trash",
        help="list deleted or replaced versions that can be restored",
        description="What 'restore' can bring back: copies in the remote .S3/deleted/, the "
        "local trash .S3/trash/, and S3 object versions of deleted files where versioning is "
        "on. VERSION numbers each path's versions, newest first.",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser(
        "restore",
        help="bring a deleted version back as a new local file (then approve its upload)",
        description="Write a version listed by 'trash' into the data folder. It never "
        "overwrites a file: if PATH (or DEST) exists, the version is written beside it as "
        "name.restored-<stamp>.ext, unless --force (then the existing file goes to the local "
        "trash first). The restored file syncs like any other change: it appears in "
        "'pending' as an upload.",
    )
    s.add_argument("path", metavar="PATH", help="the path it had, as 'trash' lists it")
    s.add_argument(
        "--version", type=int, default=1, metavar="N", help="which one (1 = newest, the default)"
    )
    s.add_argument("--to", metavar="DEST", help="restore to this path instead of PATH")
    s.add_argument("--force", action="store_true", help="replace an existing file (kept in trash)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
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


def show_status(st: dict[str, Any]) -> None:
    from s3syncd import display

    display.emit(display.status_view(st))


def show_pending(items: list[dict[str, Any]]) -> None:
    from s3syncd import display

    display.show_pending(items)


def wait_for(ctl: Ctl, ids: list[str], timeout: float | None = None) -> int:
    """Wait until the approved actions ran; draw a progress bar on a terminal."""
    from s3syncd.display import TransferBar

    if not ids:
        return EXIT_OK
    deadline = None if timeout is None else time.monotonic() + timeout
    with TransferBar(len(ids), 0, "approved") as bar:
        while True:
            st = ctl.call("status", {"ids": ids})
            states = {i: a["state"] for i, a in st["actions"].items()}
            tr = st["transfers"]
            done = sum(1 for s in states.values() if s not in ("approved", "running"))
            bar.update(tr["bytes_done"], tr["bytes_total"], done)
            if done == len(states):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling the daemon for progress is the point here
    if done < len(states):
        _out("still running; see 's3syncctl status'")
        return EXIT_OK
    failed = 0
    for i, a in st["actions"].items():
        _out(f"{i}: {a['state']}{': ' + a['message'] if a['message'] else ''}")
        failed += a["state"] == "failed"
    return EXIT_ERROR if failed else EXIT_OK


def follow_transfers(ctl: Ctl, timeout: float = 3600.0) -> None:
    """Show the progress of already approved actions (auto-approved ones after a sync)."""
    from s3syncd.display import TransferBar

    st = ctl.call("status")
    first = int(st["approved"])
    if not first:
        return
    deadline = time.monotonic() + timeout
    with TransferBar(first, 0, "approved") as bar:
        while st["approved"] and time.monotonic() < deadline:
            tr = st["transfers"]
            bar.update(tr["bytes_done"], tr["bytes_total"], max(first - int(st["approved"]), 0))
            time.sleep(0.2)  # polling the daemon for progress is the point here
            st = ctl.call("status")


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
        if sys.stderr.isatty():
            follow_transfers(ctl)
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
    if cmd == "watch":
        from s3syncd.watch import watch

        return watch(ctl, once=args.once, interval=max(args.interval, 0.1))
    if cmd == "log":
        for line in ctl.call("log", {"n": args.n})["lines"]:
            _out(line)
        return EXIT_OK
    if cmd in LOOKBACK:
        return LOOKBACK[cmd](ctl, args)
    raise SyncError(f"unknown command {cmd}")


def _diff(ctl: Ctl, args: argparse.Namespace) -> int:
    res = ctl.call("diff", {"id": args.id})
    if args.json:
        _out(json.dumps({k: v for k, v in res.items() if k != "rendered"}, indent=1))
    else:
        _out(f"{res['id']} {res['action']}: {res['rendered']}")
    return EXIT_OK


def _history(ctl: Ctl, args: argparse.Namespace) -> int:
    res = ctl.call("history", {"path": args.path, "limit": args.n})
    if args.json:
        _out(json.dumps(res, indent=1))
        return EXIT_OK
    cur = res["current"]
    if cur:
        _out(f"{shown(res['path'])}: now {cur[3]} by {shown(cur[1])} at {cur[2]}")
    if not res["entries"]:
        _out("No changes seen by this folder yet.")
    for e in res["entries"]:
        ours = " (this folder)" if e["source"] == "ours" else ""
        _out(
            f"  {e['time']}  {e['action']:<8}  {shown(e['user'])}{ours}  "
            f"{e['md5'][:12]}  {_human_size(e['size'])}"
        )
    if res["versions"]:
        _out("S3 object versions (newest first):")
        for v in res["versions"]:
            what = "delete marker" if v["delete_marker"] else _human_size(v["size"])
            latest = "  (current)" if v["latest"] else ""
            _out(f"  {v['modified']}  {v['version_id']}  {what}{latest}")
    elif res["versions_error"]:
        _out(f"(S3 versions not listed: {shown(res['versions_error'])})")
    return EXIT_OK


def _trash(ctl: Ctl, args: argparse.Namespace) -> int:
    items = ctl.call("trash")
    if args.json:
        _out(json.dumps(items, indent=1))
        return EXIT_OK
    if not items:
        _out("Nothing to restore.")
        return EXIT_OK
    rows = [("PATH", "VERSION", "SIZE", "DELETED BY", "WHEN", "WHERE")]
    for it in items:
        rows.append(
            (
                shown(it["path"]),
                str(it["version"]),
                _human_size(it["size"]),
                shown(it["deleted_by"] or "-"),
                it["deleted_at"] or "-",
                it["origin"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        _out("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return EXIT_OK


def _restore(ctl: Ctl, args: argparse.Namespace) -> int:
    params = {"path": args.path, "version": args.version, "to": args.to, "force": args.force}
    res = ctl.call("restore", params)
    if args.json:
        _out(json.dumps(res, indent=1))
    else:
        _out(
            f"restored {shown(res['from']['path'])} ({res['from']['origin']}) as "
            f"{shown(res['restored'])}; approve its upload with 's3syncctl pending/approve'"
        )
    return EXIT_OK


LOOKBACK = {"diff": _diff, "history": _history, "trash": _trash, "restore": _restore}


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
