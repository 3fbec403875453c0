"""``s3syncd``: set up a folder, sync it once, reset it, or run the daemon."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3syncd import api
from s3syncd.config import DEFAULT_CONFIG_NAME, Config, load_config
from s3syncd.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, SyncError
from s3syncd.model import APPROVABLE_KINDS, POLICY_KINDS, Action, ActionKind

if TYPE_CHECKING:
    from s3syncd.display import TransferBar

log = logging.getLogger(__name__)

EPILOG = """\
exit codes: 0 ok, 1 error (or some actions failed), 2 usage or configuration error.

Settings come from the TOML config file, then S3SYNCD_* environment variables
(e.g. S3SYNCD_BUCKET, S3SYNCD_PREFIX, S3SYNCD_ENDPOINT_URL), then these flags.
Credentials come from the standard AWS chain (AWS_PROFILE, environment, instance role).
"""


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _default_config() -> Path:
    return Path(os.environ.get("S3SYNCD_CONFIG", DEFAULT_CONFIG_NAME))


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"config file (default: $S3SYNCD_CONFIG or ./{DEFAULT_CONFIG_NAME})",
    )
    g = p.add_argument_group("overrides (win over the file and the environment)")
    g.add_argument("--datafolder", help="the local data folder")
    g.add_argument("--platform", help="S3 or Local")
    g.add_argument("--bucket", help="S3 bucket")
    g.add_argument("--prefix", help="S3 prefix (no leading or trailing '/')")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    g.add_argument("--region", help="AWS region")
    g.add_argument("--profile", help="AWS profile")
    g.add_argument("--remote-path", help="remote folder for platform Local")
    g.add_argument("--user-name", help="name recorded as 'Edited By'")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "datafolder": args.datafolder,
        "platform": args.platform,
        "s3.bucket": args.bucket,
        "s3.prefix": args.prefix,
        "s3.endpoint_url": args.endpoint_url,
        "s3.region": args.region,
        "s3.profile": args.profile,
        "local.remote_path": args.remote_path,
        "user_name": args.user_name,
    }


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    default = _default_config()
    return default if default.exists() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3syncd",
        description="Keep a local data folder and an S3 prefix in two-way sync. Every "
        "upload, download, delete and conflict waits for your approval.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="s3syncd 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="write a config file for a data folder (asks what is missing)")
    _add_overrides(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not try the remote (bucket, prefix, credentials) after writing",
    )

    p = sub.add_parser(
        "sync",
        help="one sync pass in the foreground (like the original smart_sync)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_overrides(p)
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="approve every action without asking (conflicts keep both copies; "
        "a mass delete is still held)",
    )
    p.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="KIND",
        choices=[k.value for k in POLICY_KINDS],
        help="approve this kind without asking (repeatable; moves go with "
        "upload plus delete_remote)",
    )
    p.add_argument("--dry-run", "-n", action="store_true", help="show the plan, change nothing")

    p = sub.add_parser(
        "reset", help="remove sync state locally and on the remote (data files are untouched)"
    )
    _add_overrides(p)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--purge-deleted",
        action="store_true",
        help="also remove the soft-deleted copies under .S3/deleted/ on the remote",
    )

    p = sub.add_parser("run", help="run the daemon in the foreground (for systemd/launchd)")
    _add_overrides(p)

    p = sub.add_parser(
        "demo",
        help="try it with no AWS account: two folders, one local remote, two real daemons",
    )
    p.add_argument("--yes", "-y", action="store_true", help="run every step without pausing")
    p.add_argument("--dir", type=Path, help="where to put the demo (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="leave the demo folder afterwards")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # At DEBUG these log every request's headers, the session token among them; the
    # daemon keeps them at WARNING the same way.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _toml(text: str) -> str:
    # A JSON string is a valid TOML basic string (quotes, backslashes, unicode escaped).
    return json.dumps(text, ensure_ascii=False)


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else _default_config()
    if path.exists() and not args.force:
        raise SyncError(f"{path} already exists (use --force to overwrite)")
    tty = sys.stdin.isatty()

    def value(given: str | None, question: str, default: str) -> str:
        if given:
            return given
        if tty:
            return input(f"{question} [{default}]: ").strip() or default
        return default

    platform = value(args.platform, "Platform (S3 or Local)", "S3")
    lines = [
        f"datafolder = {_toml(value(args.datafolder, 'Data folder', 'Data'))}",
        f"platform = {_toml(platform)}",
    ]
    user = value(args.user_name, "Your name (recorded as 'Edited By')", os.environ.get("USER", ""))
    if user:
        lines.append(f"user_name = {_toml(user)}")
    if platform == "S3":
        bucket = value(args.bucket, "S3 bucket", "")
        if not bucket:
            raise SyncError("a bucket is required (pass --bucket)")
        lines += [
            "",
            "[s3]",
            f"bucket = {_toml(bucket)}",
            f"prefix = {_toml(value(args.prefix, 'S3 prefix', ''))}",
        ]
        for key, given in (
            ("endpoint_url", args.endpoint_url),
            ("region", args.region),
            ("profile", args.profile),
        ):
            if given:
                lines.append(f"{key} = {_toml(given)}")
    else:
        remote = value(args.remote_path, "Remote folder", "")
        if not remote:
            raise SyncError("a remote folder is required (pass --remote-path)")
        lines += ["", "[local]", f"remote_path = {_toml(remote)}"]
    lines += ["", "[policy]", "auto_approve = []", "max_delete_percent = 50", ""]
    text = "\n".join(lines)
    from s3syncd.atomicfile import write_atomic

    write_atomic(path, text.encode())
    cfg = load_config(path)  # validate what we wrote
    _out(f"wrote {path}")
    if not args.no_check:
        _check_written(cfg, path)
    if tty:
        _offer_service(path)
    _next_steps(path)
    return EXIT_OK


def _check_written(cfg: Config, path: Path) -> None:
    from s3syncd import preflight
    from s3syncd.errors import RemoteError

    try:
        result = preflight.check_remote(cfg)
    except RemoteError as exc:
        # The file stays: most fixes are outside it (credentials, a bucket to create).
        raise type(exc)(f"wrote {path}, but the remote check failed: {exc.message}") from exc
    _out(f"checked: {result.describe()}")


def _config_flag(path: Path) -> str:
    default = Path(DEFAULT_CONFIG_NAME)
    same = path.resolve() == default.resolve() and "S3SYNCD_CONFIG" not in os.environ
    return "" if same else f" --config {shlex.quote(str(path))}"


def _offer_service(path: Path) -> None:
    answer = input("Run it in the background at login (s3syncctl service install)? [y/N]: ")
    if answer.strip().lower() not in ("y", "yes"):
        return
    from s3syncd import ctl

    ctl.main([*shlex.split(_config_flag(path)), "service", "install"])


def _next_steps(path: Path) -> None:
    flag = _config_flag(path)
    _out("next:")
    _out(f"  s3syncd run{flag}        # the daemon, in the foreground (Ctrl-C stops it)")
    _out(f"  s3syncctl{flag} pending  # in another terminal: what waits for your approval")


def _transfer_bar(actions: Sequence[Action]) -> TransferBar:
    from s3syncd.display import TransferBar

    return TransferBar(len(actions), sum(max(a.size or 0, 0) for a in actions), "sync")


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = load_config(_config_path(args), _overrides(args))
    auto = set(APPROVABLE_KINDS) if args.yes else {ActionKind(k) for k in args.approve}
    ask = input if sys.stdin.isatty() and not args.yes else None
    summary = api.run_once(
        cfg, auto=auto, dry_run=args.dry_run, ask=ask, say=_out, meter=_transfer_bar
    )
    if summary.done or summary.failed:
        _out(f"done: {len(summary.done)} ok, {len(summary.failed)} failed")
    return EXIT_OK if summary.ok else EXIT_ERROR


def cmd_reset(args: argparse.Namespace) -> int:
    from s3syncd import interactive

    cfg = load_config(_config_path(args), _overrides(args))
    remote = api.build_remote(cfg)
    try:
        question = f"Remove all sync state in {cfg.state_dir} and on {remote.describe()}?"
        if not args.yes and not interactive.confirm_reset(question):
            _out("Reset cancelled.")
            return EXIT_OK
        for item in api.reset(cfg, purge_deleted=args.purge_deleted, remote=remote):
            _out(f"removed {item}")
    finally:
        remote.close()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from s3syncd import daemon

    cfg = load_config(_config_path(args), _overrides(args))
    return daemon.run(cfg, verbose=args.verbose)


def cmd_demo(args: argparse.Namespace) -> int:
    from s3syncd.demo import run_demo

    interactive = sys.stdin.isatty() and not args.yes
    run_demo(args.dir, keep=args.keep, interactive=interactive, say=_out)
    return EXIT_OK


COMMANDS = {
    "init": cmd_init,
    "sync": cmd_sync,
    "reset": cmd_reset,
    "run": cmd_run,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command != "run":
        _setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except SyncError as exc:
        sys.stderr.write(f"s3syncd: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("s3syncd: interrupted\n")
        return EXIT_ERROR
