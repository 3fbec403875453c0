"""Configuration: one TOML file per synced folder, then S3SYNCD_* variables, then flags.

Every setting has a dotted key (``s3.bucket``, ``policy.auto_approve``, ...). The file is
read first, the environment overrides it, and command-line overrides win.
"""

from __future__ import annotations

import configparser
import getpass
import logging
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3syncd.errors import ConfigError
from s3syncd.model import POLICY_KINDS, STATE_DIR, ActionKind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "s3syncd.toml"

# S3SYNCD_<NAME> -> dotted key
ENV_KEYS = {
    "DATAFOLDER": "datafolder",
    "PLATFORM": "platform",
    "USER_NAME": "user_name",
    "BUCKET": "s3.bucket",
    "PREFIX": "s3.prefix",
    "ENDPOINT_URL": "s3.endpoint_url",
    "REGION": "s3.region",
    "PROFILE": "s3.profile",
    "TRANSFER_ENGINE": "s3.transfer_engine",
    "REMOTE_PATH": "local.remote_path",
    "AUTO_APPROVE": "policy.auto_approve",
    "MAX_DELETE_PERCENT": "policy.max_delete_percent",
    "DEBOUNCE": "daemon.debounce",
    "POLL_INTERVAL": "daemon.poll_interval",
    "RESCAN_INTERVAL": "daemon.rescan_interval",
    "AUDIT_INTERVAL": "daemon.audit_interval",
    "WORKERS": "daemon.workers",
    "SOCKET": "daemon.socket",
    "LOG_LEVEL": "daemon.log_level",
    "NOTIFY": "daemon.notify",
}

KNOWN_KEYS = {
    "name",
    "datafolder",
    "platform",
    "user_name",
    "s3.bucket",
    "s3.prefix",
    "s3.endpoint_url",
    "s3.region",
    "s3.profile",
    "s3.multipart_threshold_mb",
    "s3.transfer_engine",
    "local.remote_path",
    "policy.auto_approve",
    "policy.max_delete_percent",
    "daemon.debounce",
    "daemon.poll_interval",
    "daemon.rescan_interval",
    "daemon.audit_interval",
    "daemon.workers",
    "daemon.socket",
    "daemon.log_level",
    "daemon.notify",
}


@dataclass(frozen=True, slots=True)
class Policy:
    auto_approve: frozenset[ActionKind] = frozenset()
    max_delete_percent: float = 50.0


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    debounce: float = 2.0
    poll_interval: float = 60.0
    rescan_interval: float = 3600.0
    audit_interval: float = 3600.0
    workers: int = 8
    socket: Path | None = None
    log_level: str = "INFO"
    notify: bool = False  # desktop notification when new actions wait for approval


@dataclass(frozen=True, slots=True)
class Config:
    """A resolved configuration for one synced folder."""

    name: str
    datafolder: Path
    platform: str
    platform_settings: Mapping[str, Any]
    user_name: str | None = None
    policy: Policy = field(default_factory=Policy)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    path: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.datafolder / STATE_DIR


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return _flatten(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (create one with 's3syncd init')"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        dotted: environ[f"S3SYNCD_{name}"]
        for name, dotted in ENV_KEYS.items()
        if environ.get(f"S3SYNCD_{name}", "") != ""
    }


def _float(values: Mapping[str, Any], key: str, default: float, minimum: float = 0.0) -> float:
    raw = values.get(key, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, not {value}")
    return value


def _bool(values: Mapping[str, Any], key: str, default: bool) -> bool:
    raw = values.get(key, default)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false, not {raw!r}")


def _kinds(raw: Any) -> frozenset[ActionKind]:
    if isinstance(raw, str):
        raw = [p.strip() for p in raw.split(",") if p.strip()]
    if not isinstance(raw, list):
        raise ConfigError("policy.auto_approve must be a list of action kinds")
    names = {k.value: k for k in POLICY_KINDS}
    # "delete" is accepted as shorthand for both delete kinds.
    out: set[ActionKind] = set()
    for item in raw:
        if item == "delete":
            out |= {ActionKind.DELETE_LOCAL, ActionKind.DELETE_REMOTE}
        elif item in names:
            out.add(names[item])
        elif item == ActionKind.MOVE.value:
            raise ConfigError(
                "policy.auto_approve: 'move' is not a kind of its own; moves run unasked "
                "when both 'upload' and 'delete_remote' are listed"
            )
        else:
            raise ConfigError(
                f"policy.auto_approve: unknown kind {item!r}; use {', '.join(sorted(names))}"
            )
    return frozenset(out)


def build_config(values: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> Config:
    """Validate flattened settings into a Config. Relative folders are from ``base_dir``."""
    platform = str(values.get("platform", "S3"))
    # A plugin platform's settings live in its own table, e.g. [myplatform]; only it knows them.
    plugin_table = "" if platform in ("S3", "Local") else platform.lower() + "."
    unknown = sorted(
        k for k in set(values) - KNOWN_KEYS if not (plugin_table and k.startswith(plugin_table))
    )
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    datafolder = Path(os.path.expanduser(str(values.get("datafolder", "Data"))))
    if not datafolder.is_absolute():
        datafolder = base_dir / datafolder
    if platform == "S3":
        settings: dict[str, Any] = {
            k.removeprefix("s3."): v for k, v in values.items() if k.startswith("s3.")
        }
        if not settings.get("bucket"):
            raise ConfigError("s3.bucket is required for platform S3")
        prefix = str(settings.get("prefix", "")).strip("/")
        if ".." in prefix.split("/"):
            raise ConfigError(f"s3.prefix {prefix!r} must not contain '..'")
        settings["prefix"] = prefix
    elif platform == "Local":
        settings = {
            k.removeprefix("local."): v for k, v in values.items() if k.startswith("local.")
        }
        if not settings.get("remote_path"):
            raise ConfigError("local.remote_path is required for platform Local")
        remote = Path(os.path.expanduser(str(settings["remote_path"])))
        settings["remote_path"] = str(remote if remote.is_absolute() else base_dir / remote)
    else:
        settings = {
            k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(platform.lower() + ".")
        }
    workers = int(_float(values, "daemon.workers", 8, 1))
    socket_raw = values.get("daemon.socket")
    level = str(values.get("daemon.log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"daemon.log_level must be DEBUG, INFO, WARNING or ERROR, not {level}")
    name = str(values.get("name") or (path.stem if path else datafolder.name) or "default")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"name {name!r} may only use letters, digits, '.', '_' and '-'")
    user = values.get("user_name")
    return Config(
        name=name,
        datafolder=datafolder.resolve(),
        platform=platform,
        platform_settings=settings,
        user_name=str(user) if user else None,
        policy=Policy(
            auto_approve=_kinds(values.get("policy.auto_approve", [])),
            max_delete_percent=_float(values, "policy.max_delete_percent", 50.0),
        ),
        daemon=DaemonSettings(
            debounce=_float(values, "daemon.debounce", 2.0),
            poll_interval=_float(values, "daemon.poll_interval", 60.0, 0.1),
            rescan_interval=_float(values, "daemon.rescan_interval", 3600.0, 1.0),
            audit_interval=_float(values, "daemon.audit_interval", 3600.0, 1.0),
            workers=workers,
            socket=Path(str(socket_raw)) if socket_raw else None,
            log_level=level,
            notify=_bool(values, "daemon.notify", False),
        ),
        path=path,
    )


def load_config(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """File, then environment, then ``overrides`` (from flags or keyword arguments)."""
    values: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = path.expanduser().resolve()
        values.update(read_config_file(path))
        base_dir = path.parent
    values.update(env_overrides(os.environ if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(values, base_dir, path)


def resolve_user_name(cfg: Config, ask: bool | None = None) -> str:
    """Config, else .S3/user_name.txt, else asked on a TTY (and saved), else the login name."""
    if cfg.user_name:
        return cfg.user_name
    name_file = cfg.state_dir / "user_name.txt"
    try:
        saved = name_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        saved = ""
    except OSError as exc:
        raise ConfigError(f"cannot read {name_file}: {exc.strerror}") from exc
    if saved:
        return saved
    interactive = sys.stdin.isatty() if ask is None else ask
    name = ""
    if interactive:
        name = input("Your name (recorded as 'Edited By' for your changes): ").strip()
    name = name or getpass.getuser() or "NONAME"
    from s3syncd.atomicfile import write_atomic

    write_atomic(name_file, name.encode())
    return name


def read_legacy_credentials(state_dir: Path) -> dict[str, str] | None:
    """Read the original's ``.S3/aws.txt`` (``[role]`` then key=value lines), if safe.

    Returns None when absent. Refuses (returns None, with a warning) unless the file's
    mode is 0600, since it holds plaintext keys inside a shared data folder. Values are
    never logged.
    """
    path = state_dir / "aws.txt"
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "ignoring %s: it holds credentials but its mode is %o, not 600 "
            "(run: chmod 600 '%s', or remove it and use an AWS profile)",
            path,
            stat.S_IMODE(st.st_mode),
            path,
        )
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (configparser.Error, OSError, UnicodeDecodeError):
        log.warning("ignoring %s: not in the [role] + key=value format", path)
        return None
    wanted = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    for section in parser.sections():
        creds = {k: parser[section][k].strip() for k in wanted if parser[section].get(k)}
        if creds.get("aws_access_key_id") and creds.get("aws_secret_access_key"):
            return creds
    return None
