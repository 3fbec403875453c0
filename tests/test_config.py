"""Configuration: TOML file, then S3SYNCD_* variables, then flags; validation; user name;
the original's ``.S3/aws.txt`` credentials file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from s3syncd.config import (
    Config,
    load_config,
    read_legacy_credentials,
    resolve_user_name,
)
from s3syncd.errors import ConfigError
from s3syncd.model import ActionKind

FULL_TOML = """\
datafolder = "Data"
platform = "S3"
user_name = "user-a"
name = "alpha"

[s3]
bucket = "team-data"
prefix = "/projects/alpha/"
endpoint_url = "http://127.0.0.1:8333"
region = "eu-west-1"

[policy]
auto_approve = ["upload", "download"]
max_delete_percent = 25

[daemon]
debounce = 0.5
poll_interval = 30
workers = 3
log_level = "debug"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def s3_config(tmp_path: Path, extra: str = "", top: str = "") -> Path:
    """A minimal valid S3 config with ``top`` lines before the tables and ``extra`` after."""
    return write(
        tmp_path / "cfg" / "s3syncd.toml",
        f'{top}\n[s3]\nbucket = "b"\nprefix = "p"\n{extra}\n',
    )


def load(path: Path | None, **overrides: object) -> Config:
    return load_config(path, overrides or None, environ={})


# --- loading -----------------------------------------------------------------------------


def test_full_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path / "cfg" / "s3syncd.toml", FULL_TOML)
    cfg = load(path)
    assert cfg.name == "alpha"
    assert cfg.platform == "S3"
    assert cfg.user_name == "user-a"
    assert cfg.path == path.resolve()
    assert cfg.platform_settings["bucket"] == "team-data"
    assert cfg.platform_settings["prefix"] == "projects/alpha"  # slashes stripped
    assert cfg.platform_settings["endpoint_url"] == "http://127.0.0.1:8333"
    assert cfg.platform_settings["region"] == "eu-west-1"
    assert cfg.policy.auto_approve == {ActionKind.UPLOAD, ActionKind.DOWNLOAD}
    assert cfg.policy.max_delete_percent == 25.0
    assert cfg.daemon.debounce == 0.5
    assert cfg.daemon.poll_interval == 30.0
    assert cfg.daemon.workers == 3
    assert cfg.daemon.log_level == "DEBUG"
    assert cfg.daemon.rescan_interval == 3600.0  # default kept
    assert cfg.state_dir == cfg.datafolder / ".S3"


def test_defaults(tmp_path: Path) -> None:
    cfg = load(s3_config(tmp_path))
    assert cfg.name == "s3syncd"  # the config file's stem
    assert cfg.user_name is None
    assert cfg.policy.auto_approve == frozenset()
    assert cfg.policy.max_delete_percent == 50.0
    assert cfg.daemon.poll_interval == 60.0
    assert cfg.daemon.workers == 8
    assert cfg.daemon.socket is None


def test_relative_datafolder_is_resolved_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = s3_config(tmp_path, top='datafolder = "sub/Data"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(path)
    assert cfg.datafolder == (tmp_path / "cfg" / "sub" / "Data").resolve()


def test_absolute_datafolder_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "Data"
    cfg = load(s3_config(tmp_path, top=f'datafolder = "{target}"'))
    assert cfg.datafolder == target.resolve()


def test_local_platform_relative_remote_path_is_from_the_config_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cfg" / "c.toml", 'platform = "Local"\n[local]\nremote_path = "../remote"\n'
    )
    cfg = load(path)
    assert cfg.platform == "Local"
    assert Path(cfg.platform_settings["remote_path"]).resolve() == (tmp_path / "remote").resolve()


def test_no_file_uses_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(None, **{"s3.bucket": "b"})
    assert cfg.datafolder == (tmp_path / "Data").resolve()
    assert cfg.path is None


# --- environment and flags ---------------------------------------------------------------


def test_environment_overrides_the_file_and_flags_win(tmp_path: Path) -> None:
    path = s3_config(tmp_path, extra="[daemon]\npoll_interval = 30\n")
    environ = {
        "S3SYNCD_BUCKET": "env-bucket",
        "S3SYNCD_PREFIX": "env/prefix",
        "S3SYNCD_POLL_INTERVAL": "5",
        "S3SYNCD_AUTO_APPROVE": "upload, conflict",
        "S3SYNCD_USER_NAME": "",  # empty variables are ignored
        "UNRELATED": "x",
    }
    cfg = load_config(path, None, environ=environ)
    assert cfg.platform_settings["bucket"] == "env-bucket"
    assert cfg.platform_settings["prefix"] == "env/prefix"
    assert cfg.daemon.poll_interval == 5.0
    assert cfg.policy.auto_approve == {ActionKind.UPLOAD, ActionKind.CONFLICT}
    assert cfg.user_name is None

    flags = {"s3.bucket": "flag-bucket", "s3.prefix": None, "daemon.poll_interval": 7}
    cfg = load_config(path, flags, environ=environ)
    assert cfg.platform_settings["bucket"] == "flag-bucket"
    assert cfg.platform_settings["prefix"] == "env/prefix"  # None flag = not given
    assert cfg.daemon.poll_interval == 7.0


def test_process_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3SYNCD_BUCKET", "from-os-environ")
    cfg = load_config(s3_config(tmp_path))
    assert cfg.platform_settings["bucket"] == "from-os-environ"


def test_env_datafolder_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    cfg = load_config(s3_config(tmp_path), None, environ={"S3SYNCD_DATAFOLDER": "Other"})
    assert cfg.datafolder == (tmp_path / "cfg" / "Other").resolve()


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top", "extra", "message"),
    [
        ("", "[policy]\nauto_approve = ['upload', 'explode']", "unknown kind 'explode'"),
        ("", "[policy]\nauto_approve = 'record'", "unknown kind 'record'"),
        ("", "[policy]\nauto_approve = 3", "must be a list of action kinds"),
        ("", "[daemon]\npoll_interval = 'often'", "daemon.poll_interval must be a number"),
        ("", "[daemon]\npoll_interval = 0", "daemon.poll_interval must be at least"),
        ("", "[daemon]\nworkers = 0", "daemon.workers must be at least"),
        ("", "[daemon]\nlog_level = 'LOUD'", "daemon.log_level must be"),
        ("", "[s3.extra]\nbogus = 1", "unknown setting(s): s3.extra.bogus"),
        ("colour = 'blue'", "", "unknown setting(s): colour"),
        ("name = 'a b'", "", "name 'a b' may only use letters"),
        ("name = '../x'", "", "may only use letters"),
    ],
)
def test_invalid_settings_are_config_errors(
    tmp_path: Path, top: str, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(s3_config(tmp_path, extra=extra, top=top))
    assert message in info.value.message


def test_unknown_key_in_a_table_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[s3]\nbucket = "b"\nbukcet = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): s3\.bukcet"):
        load(path)


def test_missing_bucket(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[s3]\nprefix = "p"\n')
    with pytest.raises(ConfigError, match=r"s3\.bucket is required for platform S3"):
        load(path)


def test_missing_remote_path_for_local(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'platform = "Local"\n')
    with pytest.raises(ConfigError, match=r"local\.remote_path is required"):
        load(path)


@pytest.mark.parametrize("prefix", ["../up", "a/../b", "a/..", ".."])
def test_dotdot_in_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"must not contain '\.\.'"):
        load(None, **{"s3.bucket": "b", "s3.prefix": prefix})


def test_dots_inside_a_prefix_segment_are_fine(tmp_path: Path) -> None:
    cfg = load(None, **{"s3.bucket": "b", "s3.prefix": "v1..2/x"})
    assert cfg.platform_settings["prefix"] == "v1..2/x"


def test_missing_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml")
    assert "does not exist" in info.value.message
    assert "s3syncd init" in info.value.message
    assert info.value.exit_code == 2


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "datafolder = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(path)


# --- auto_approve --------------------------------------------------------------------------


def test_delete_is_shorthand_for_both_delete_kinds(tmp_path: Path) -> None:
    cfg = load(s3_config(tmp_path, extra="[policy]\nauto_approve = ['delete']"))
    assert cfg.policy.auto_approve == {ActionKind.DELETE_LOCAL, ActionKind.DELETE_REMOTE}


def test_every_approvable_kind_is_accepted(tmp_path: Path) -> None:
    kinds = "['upload', 'download', 'delete_remote', 'delete_local', 'conflict']"
    cfg = load(s3_config(tmp_path, extra=f"[policy]\nauto_approve = {kinds}"))
    # A move is not a policy kind: it runs unasked when both upload and delete_remote do.
    assert cfg.policy.auto_approve == set(ActionKind) - {ActionKind.RECORD, ActionKind.MOVE}


def test_move_is_refused_as_a_policy_kind_with_what_to_write_instead(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both 'upload' and 'delete_remote'"):
        load(s3_config(tmp_path, extra="[policy]\nauto_approve = ['move']"))


# --- user name -----------------------------------------------------------------------------


def local_config(tmp_path: Path, user: str | None = None) -> Config:
    values: dict[str, object] = {
        "platform": "Local",
        "local.remote_path": str(tmp_path / "remote"),
        "datafolder": str(tmp_path / "Data"),
        "user_name": user,
    }
    return load_config(None, values, environ={})


def test_user_name_from_config_wins(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, user="from-config")
    write(cfg.state_dir / "user_name.txt", "from-file\n")
    assert resolve_user_name(cfg, ask=False) == "from-config"


def test_user_name_from_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("s3syncd.config.getpass.getuser", lambda: "login-name")
    cfg = local_config(tmp_path)
    write(cfg.state_dir / "user_name.txt", "  from-file \n")
    assert resolve_user_name(cfg, ask=False) == "from-file"


def test_user_name_falls_back_to_login_name_and_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("s3syncd.config.getpass.getuser", lambda: "login-name")

    def no_input(prompt: str = "") -> str:
        raise AssertionError("must not ask when ask=False")

    monkeypatch.setattr("builtins.input", no_input)
    cfg = local_config(tmp_path)
    assert resolve_user_name(cfg, ask=False) == "login-name"
    assert (cfg.state_dir / "user_name.txt").read_text(encoding="utf-8") == "login-name"


def test_user_name_is_asked_when_interactive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt="": "  asked-name ")
    cfg = local_config(tmp_path)
    assert resolve_user_name(cfg, ask=True) == "asked-name"
    assert (cfg.state_dir / "user_name.txt").read_text(encoding="utf-8") == "asked-name"


# --- legacy credentials ----------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
AWS_TXT = f"""[123456789012_PowerUser]
aws_access_key_id=AKIAEXAMPLEKEYID
aws_secret_access_key={SECRET}
aws_session_token=FwoGZXIvYXdzEXAMPLETOKEN
"""


def write_aws_txt(state_dir: Path, mode: int, text: str = AWS_TXT) -> Path:
    path = write(state_dir / "aws.txt", text)
    os.chmod(path, mode)
    return path


def test_legacy_credentials_are_read_when_private(tmp_path: Path) -> None:
    write_aws_txt(tmp_path, 0o600)
    assert read_legacy_credentials(tmp_path) == {
        "aws_access_key_id": "AKIAEXAMPLEKEYID",
        "aws_secret_access_key": SECRET,
        "aws_session_token": "FwoGZXIvYXdzEXAMPLETOKEN",
    }


def test_legacy_credentials_without_token(tmp_path: Path) -> None:
    write_aws_txt(
        tmp_path,
        0o600,
        f"[acct_Role]\naws_access_key_id = AKIAX\naws_secret_access_key = {SECRET}\n",
    )
    assert read_legacy_credentials(tmp_path) == {
        "aws_access_key_id": "AKIAX",
        "aws_secret_access_key": SECRET,
    }


def test_world_readable_credentials_are_ignored_without_leaking_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_aws_txt(tmp_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="s3syncd.config"):
        assert read_legacy_credentials(tmp_path) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert str(path) in text
    assert "644" in text
    assert SECRET not in caplog.text
    assert "AKIAEXAMPLEKEYID" not in caplog.text


def test_group_readable_credentials_are_ignored(tmp_path: Path) -> None:
    write_aws_txt(tmp_path, 0o640)
    assert read_legacy_credentials(tmp_path) is None


def test_missing_credentials_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="s3syncd.config"):
        assert read_legacy_credentials(tmp_path) is None
    assert caplog.records == []


def test_malformed_credentials_file_is_ignored_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_aws_txt(tmp_path, 0o600, f"aws_secret_access_key={SECRET}\n")  # no [section]
    with caplog.at_level(logging.WARNING, logger="s3syncd.config"):
        assert read_legacy_credentials(tmp_path) is None
    assert "not in the [role] + key=value format" in caplog.text
    assert SECRET not in caplog.text


def test_incomplete_credentials_are_none(tmp_path: Path) -> None:
    write_aws_txt(tmp_path, 0o600, "[role]\naws_access_key_id=AKIAX\n")
    assert read_legacy_credentials(tmp_path) is None


# --- plugin platforms --------------------------------------------------------------------------


def test_plugin_platform_settings_come_from_its_own_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        'platform = "MyCloud"\n[mycloud]\nendpoint = "https://example.invalid"\nretries = 3\n',
    )
    cfg = load(path)
    assert cfg.platform == "MyCloud"
    assert cfg.platform_settings == {"endpoint": "https://example.invalid", "retries": 3}


def test_other_tables_are_still_checked_for_a_plugin_platform(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml", 'platform = "MyCloud"\n[mycloud]\na = 1\n[s3]\nbukcet = "x"\n'
    )
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): s3\.bukcet"):
        load(path)


def test_a_plugin_table_is_unknown_for_a_builtin_platform(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): mycloud\.a"):
        load(s3_config(tmp_path, extra="[mycloud]\na = 1"))
