"""Service files (systemd, launchd), their installation, and sd_notify."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3syncd import service
from s3syncd.errors import ConfigError, SyncError
from s3syncd.service import UnitFile

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def exec_start(unit: str) -> str:
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


# --- checked-in files -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(service.generic_files()))
def test_checked_in_file_matches_render(name: str) -> None:
    checked_in = (REPO / "service" / name).read_bytes()
    assert checked_in == service.generic_files()[name], (
        f"service/{name} drifted; regenerate it as service/README.md says"
    )


def test_generic_units_leave_specifiers_to_systemd() -> None:
    files = service.generic_files()
    unit = files["s3syncd.service"].decode()
    template = files["s3syncd@.service"].decode()
    assert exec_start(unit) == "%h/.local/bin/s3syncd run --config %E/s3syncd/s3syncd.toml"
    assert exec_start(template) == "%h/.local/bin/s3syncd run --config %E/s3syncd/%i.toml"


# --- systemd rendering ------------------------------------------------------------------


def test_unit_has_the_required_settings() -> None:
    unit = service.render_systemd_unit("/usr/bin/s3syncd", Path("/home/u/.config/s3syncd/a.toml"))
    for line in [
        "[Unit]",
        "After=network-online.target",
        "Wants=network-online.target",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/s3syncd run --config /home/u/.config/s3syncd/a.toml",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "[Install]",
        "WantedBy=default.target",
    ]:
        assert line in unit.splitlines(), line
    assert any(x.startswith("Description=") for x in unit.splitlines())
    assert any(x.startswith("Documentation=https://") for x in unit.splitlines())


def test_exec_start_quotes_spaces_percent_dollar_and_quotes() -> None:
    config = Path('/home/u/my data/50% "$HOME".toml')
    line = exec_start(service.render_systemd_unit("/usr/bin/s3syncd", config))
    assert line == r'/usr/bin/s3syncd run --config "/home/u/my data/50%% \"$$HOME\".toml"'


def test_exec_start_splits_a_multi_word_command() -> None:
    exe = shlex.join(["/opt/my python/bin/python3", "-m", "s3syncd"])
    line = exec_start(service.render_systemd_unit(exe, Path("/c.toml")))
    assert line == '"/opt/my python/bin/python3" -m s3syncd run --config /c.toml'


def test_existing_executable_with_spaces_is_one_word(tmp_path: Path) -> None:
    exe = tmp_path / "my bin" / "s3syncd"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    assert service.exe_argv(str(exe)) == [str(exe)]
    assert exec_start(service.render_systemd_unit(str(exe), Path("/c.toml"))).startswith(
        f'"{exe}" run'
    )


def test_first_word_never_reads_as_an_exec_prefix() -> None:
    # A bare leading "-" would mean "ignore failure" to systemd.
    line = exec_start(service.render_systemd_unit("-weird", Path("/c.toml")))
    assert line.startswith('"-weird" ')


def test_relative_config_and_control_characters_are_refused() -> None:
    with pytest.raises(ConfigError):
        service.render_systemd_unit("/usr/bin/s3syncd", Path("relative.toml"))
    with pytest.raises(ConfigError):
        service.render_systemd_unit("/usr/bin/s3syncd", Path("/a\nb.toml"))


def test_template_reads_config_by_instance_name() -> None:
    line = exec_start(service.render_systemd_template("/usr/bin/s3syncd"))
    assert line == "/usr/bin/s3syncd run --config %E/s3syncd/%i.toml"


# --- systemd-analyze verify -------------------------------------------------------------


def run_verify(
    unit_dir: Path, unit_name: str, runtime_dir: Path
) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), SYSTEMD_LOG_LEVEL="info")
    env.pop("SYSTEMD_UNIT_PATH", None)
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--user", "--man=no", "--generators=no", unit_name],
        cwd=unit_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def verify_dirs(short_tmp: Path) -> tuple[Path, Path]:
    """A folder for units and a private runtime dir, or skip if systemd-analyze cannot run."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    units = short_tmp / "units"
    runtime = short_tmp / "runtime"
    units.mkdir()
    runtime.mkdir(mode=0o700)
    probe = units / "s3syncd-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    result = run_verify(units, probe.name, runtime)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()[:300]}")
    probe.unlink()
    return units, runtime


def verify_problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_verify_catches_a_bad_unit(verify_dirs: tuple[Path, Path]) -> None:
    # The harness must be able to fail, or the checks below prove nothing.
    units, runtime = verify_dirs
    unit = service.render_systemd_unit(service.default_exe(), Path("/c.toml"))
    bad = unit.replace("RestartSec=5", "RestartSec=5\nBogusKey=1")
    (units / "s3syncd-bad.service").write_text(bad)
    result = run_verify(units, "s3syncd-bad.service", runtime)
    assert "BogusKey" in result.stderr


def test_systemd_analyze_verifies_the_unit(verify_dirs: tuple[Path, Path]) -> None:
    units, runtime = verify_dirs
    # A config path that needs quoting and escaping, and a real executable.
    config = Path("/home/u/my data/50% $x.toml")
    (units / "s3syncd-demo.service").write_text(
        service.render_systemd_unit(service.default_exe(), config)
    )
    result = run_verify(units, "s3syncd-demo.service", runtime)
    assert result.returncode == 0, result.stderr
    assert verify_problems(result) == []


def test_systemd_analyze_verifies_a_template_instance(verify_dirs: tuple[Path, Path]) -> None:
    units, runtime = verify_dirs
    (units / "s3syncd@.service").write_text(service.render_systemd_template(service.default_exe()))
    (units / "s3syncd@demo.service").symlink_to("s3syncd@.service")
    result = run_verify(units, "s3syncd@demo.service", runtime)
    assert result.returncode == 0, result.stderr
    assert verify_problems(result) == []


def test_systemd_analyze_verifies_a_multi_word_command(verify_dirs: tuple[Path, Path]) -> None:
    units, runtime = verify_dirs
    exe = shlex.join([sys.executable, "-m", "s3syncd"])
    (units / "s3syncd-py.service").write_text(service.render_systemd_unit(exe, Path("/c.toml")))
    result = run_verify(units, "s3syncd-py.service", runtime)
    assert result.returncode == 0, result.stderr
    assert verify_problems(result) == []


# --- launchd ----------------------------------------------------------------------------


def test_plist_parses_and_has_the_keys() -> None:
    data = service.render_launchd_plist(
        "/usr/local/bin/s3syncd",
        Path("/Users/u/.config/s3syncd/work.toml"),
        "io.s3syncd.work",
        Path("/Users/u/Library/Logs"),
    )
    plist = plistlib.loads(data)
    assert plist["Label"] == "io.s3syncd.work"
    assert plist["ProgramArguments"] == [
        "/usr/local/bin/s3syncd",
        "run",
        "--config",
        "/Users/u/.config/s3syncd/work.toml",
    ]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Background"
    assert plist["ExitTimeOut"] == 30
    for key in ("StandardErrorPath", "StandardOutPath"):
        assert Path(plist[key]).parent == Path("/Users/u/Library/Logs")
    assert plist["StandardErrorPath"] != plist["StandardOutPath"]


def test_plist_splits_a_multi_word_command() -> None:
    exe = shlex.join(["/opt/my python/bin/python3", "-m", "s3syncd"])
    plist = plistlib.loads(
        service.render_launchd_plist(exe, Path("/c.toml"), "io.s3syncd.c", Path("/logs"))
    )
    assert plist["ProgramArguments"][:3] == ["/opt/my python/bin/python3", "-m", "s3syncd"]


def test_plist_refuses_relative_paths() -> None:
    with pytest.raises(ConfigError):
        service.render_launchd_plist("/bin/s3syncd", Path("~/c.toml"), "io.s3syncd.c", Path("/l"))


# --- sd_notify --------------------------------------------------------------------------


def test_sd_notify_sends_to_a_path_socket(short_tmp: Path) -> None:
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        assert service.sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is True
        assert receiver.recv(4096) == b"READY=1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_sd_notify_sends_to_an_abstract_socket() -> None:
    name = f"s3syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        assert service.sd_notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": f"@{name}"})
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sd_notify_without_socket_returns_false() -> None:
    assert service.sd_notify("READY=1", {}) is False
    assert service.sd_notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_sd_notify_uses_the_process_environment(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert service.sd_notify("READY=1") is False
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert service.sd_notify("STOPPING=1") is True
        assert receiver.recv(4096) == b"STOPPING=1"


def test_sd_notify_never_raises(short_tmp: Path) -> None:
    assert service.sd_notify("READY=1", {"NOTIFY_SOCKET": str(short_tmp / "missing")}) is False
    assert service.sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


# --- plan_install and install -----------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg" / "work.toml"
    path.parent.mkdir()
    path.write_text('datafolder = "Data"\n')
    return path


def test_plan_install_linux(config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files, command = service.plan_install(
        config, "work", system="linux", home=home, exe="/usr/bin/s3syncd"
    )
    assert [f.path for f in files] == [home / ".config/systemd/user/s3syncd-work.service"]
    assert files[0].content == service.render_systemd_unit("/usr/bin/s3syncd", config).encode()
    assert command == (
        "systemctl --user daemon-reload && systemctl --user enable --now s3syncd-work.service"
    )


def test_plan_install_darwin(config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files, command = service.plan_install(
        config, "work", system="darwin", home=home, exe="/usr/local/bin/s3syncd"
    )
    path = home / "Library/LaunchAgents/io.s3syncd.work.plist"
    assert [f.path for f in files] == [path]
    plist = plistlib.loads(files[0].content)
    assert plist["Label"] == "io.s3syncd.work"
    assert plist["ProgramArguments"][-1] == str(config)
    assert Path(plist["StandardErrorPath"]).parent == home / "Library/Logs"
    assert command == f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(path))}"


def test_plan_install_other_system(config: Path, tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="supports Linux \\(systemd\\) and macOS \\(launchd\\)"):
        service.plan_install(config, "work", system="win32", home=tmp_path, exe="s3syncd")


def test_plan_install_checks_name_and_config(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        service.plan_install(config, "a/b", system="linux", home=tmp_path, exe="s3syncd")
    with pytest.raises(ConfigError):
        service.plan_install(
            tmp_path / "missing.toml", "m", system="linux", home=tmp_path, exe="s3syncd"
        )


def test_install_dry_run_writes_nothing(config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files, command = service.plan_install(
        config, "work", system="linux", home=home, exe="/usr/bin/s3syncd"
    )
    lines: list[str] = []
    service.install(files, True, lines.append, enable_command=command)
    assert not home.exists()
    text = "\n".join(lines)
    assert f"# {files[0].path}" in lines
    assert "ExecStart=/usr/bin/s3syncd run --config" in text
    assert lines[-1] == command


def test_install_writes_then_keeps_identical_files(config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files, command = service.plan_install(
        config, "work", system="linux", home=home, exe="/usr/bin/s3syncd"
    )
    lines: list[str] = []
    service.install(files, False, lines.append, enable_command=command)
    assert files[0].path.read_bytes() == files[0].content
    assert stat.S_IMODE(files[0].path.stat().st_mode) == 0o644
    assert lines == [f"wrote {files[0].path}", command]
    lines.clear()
    service.install(files, False, lines.append)
    assert lines == [f"unchanged {files[0].path}"]


def test_install_refuses_to_clobber_different_content(tmp_path: Path) -> None:
    kept = UnitFile(tmp_path / "a.service", b"mine\n")
    kept.path.write_bytes(b"edited by the user\n")
    new = UnitFile(tmp_path / "b.service", b"new\n")
    with pytest.raises(SyncError, match="--force"):
        service.install([new, kept], False, lambda _line: None)
    # Checked before writing: nothing changed, not even the file that was free to write.
    assert kept.path.read_bytes() == b"edited by the user\n"
    assert not new.path.exists()
    service.install([new, kept], False, lambda _line: None, force=True)
    assert kept.path.read_bytes() == b"mine\n"
    assert new.path.read_bytes() == b"new\n"


# --- default_exe ------------------------------------------------------------------------


def test_default_exe_prefers_the_script_next_to_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    script = bindir / "s3syncd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    assert service.default_exe() == str(script)


def test_default_exe_falls_back_to_path_then_python_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = tmp_path / "my env" / "python3"
    python.parent.mkdir()
    monkeypatch.setattr(sys, "executable", str(python))
    onpath = tmp_path / "onpath"
    onpath.mkdir()
    script = onpath / "s3syncd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(onpath))
    assert service.default_exe() == str(script)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    exe = service.default_exe()
    assert service.exe_argv(exe) == [str(python), "-m", "s3syncd"]
    assert exec_start(service.render_systemd_unit(exe, Path("/c.toml"))).startswith(
        f'"{python}" -m s3syncd run'
    )
