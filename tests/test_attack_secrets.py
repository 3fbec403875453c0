"""Attack: credentials must never leak into logs, outputs or state, and ``.S3/aws.txt`` is
used only at mode 0600 and never written.

Every run is a real subprocess (``s3syncd sync -vv``, the daemon at ``-vv``) or the real
``s3syncctl`` against that daemon. The environment always carries distinctive fake keys and
a session token; ``aws.txt`` carries either the server's keys (the working runs: the fake
environment keys would fail, so a working run proves aws.txt was used) or distinctive fake
ones with a session token in the original's four-line format (the error paths). Afterwards
every output, every file in the test's folders and every object under the prefix is
searched for each secret.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from polling import wait_until

from s3syncd import ctl

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.daemon]

ENV_KEY = "AKIAENVx9Qz7Kw3Lp2Vb"
ENV_SECRET = "SECRETenvx9Qz7Kw3Lp2Vb8Nf4Hs6Jd1Tg5Ry0Um"
ENV_TOKEN = "TOKENenvx9Qz7Kw3Lp2Vb8Nf4Hs6Jd1Tg5Ry0UmIoPa"
FAKE_KEY = "AKIAFILEx9Qz7Kw3Lp2V"
FAKE_SECRET = "SECRETfilex9Qz7Kw3Lp2Vb8Nf4Hs6Jd1Tg5Ry0U"
FAKE_TOKEN = "TOKENfilex9Qz7Kw3Lp2Vb8Nf4Hs6Jd1Tg5Ry0UmIoPa"
CONFIG_SECRET = "SECRETcfgx9Qz7Kw3Lp2Vb8Nf4Hs6Jd1Tg5Ry0Um"
PREFIX = "secrets"


@dataclass
class Lab:
    root: Path
    data: Path
    server: S3Server
    bucket: str
    env: dict[str, str]
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, text)
    error_paths: list[str] = field(default_factory=list)

    @property
    def aws_txt(self) -> Path:
        return self.data / ".S3" / "aws.txt"

    def config(self, name: str = "lab", **over: str) -> Path:
        values = {
            "bucket": self.bucket,
            "prefix": PREFIX,
            "endpoint_url": self.server.endpoint,
            "region": self.server.region,
        }
        values.update(over)
        extra = values.pop("extra", "")
        path = self.root / f"{name}.toml"
        path.write_text(
            'datafolder = "Data"\nuser_name = "lab"\n[s3]\n'
            + "".join(f'{k} = "{v}"\n' for k, v in values.items())
            + "[daemon]\ndebounce = 0.2\npoll_interval = 1.0\n"
            + extra
        )
        return path

    def write_aws_txt(self, key: str, secret: str, token: str | None, mode: int = 0o600) -> None:
        lines = ["[123456789012_DataScientist]", f"aws_access_key_id={key}"]
        lines.append(f"aws_secret_access_key={secret}")
        if token is not None:
            lines.append(f"aws_session_token={token}")
        self.aws_txt.parent.mkdir(parents=True, exist_ok=True)
        self.aws_txt.write_text("\n".join(lines) + "\n")
        self.aws_txt.chmod(mode)

    def sync(self, what: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "s3syncd",
                "sync",
                "-vv",
                "--yes",
                "--config",
                str(config),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=180,
        )
        self.outputs.append((f"{what}: stdout", proc.stdout))
        self.outputs.append((f"{what}: stderr", proc.stderr))
        return proc

    def ctl(self, config: Path, *args: str) -> tuple[int, str]:
        buf, err = StringIO(), StringIO()
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = buf, err
        try:
            code = ctl.main(["--config", str(config), *args])
        finally:
            sys.stdout, sys.stderr = old
        text = buf.getvalue() + err.getvalue()
        self.outputs.append((f"s3syncctl {' '.join(args)}", text))
        return code, text


@pytest.fixture
def lab(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    runtime = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))  # AF_UNIX paths stay short
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("S3SYNCD_", "AWS_"))  # nothing from the host's AWS setup
    }
    env.update(
        XDG_RUNTIME_DIR=str(runtime),
        AWS_ACCESS_KEY_ID=ENV_KEY,
        AWS_SECRET_ACCESS_KEY=ENV_SECRET,
        AWS_SESSION_TOKEN=ENV_TOKEN,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
    )
    data = tmp_path / "Data"
    data.mkdir()
    try:
        yield Lab(tmp_path, data, s3_server, s3_bucket, env)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_secret_leaks_and_aws_txt_is_read_only_at_0600(
    lab: Lab, s3_client: S3Client, capsys: pytest.CaptureFixture[str]
) -> None:
    server_secret = lab.server.secret_key
    # --- working runs: aws.txt (0600) holds the server's keys; the environment's are fake.
    lab.write_aws_txt(lab.server.access_key, server_secret, None)
    seen = (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns)

    def aws_txt_untouched() -> None:
        assert (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns) == seen
        assert stat.S_IMODE(lab.aws_txt.stat().st_mode) == 0o600

    cfg = lab.config()
    (lab.data / "one.txt").write_text("one")
    proc = lab.sync("sync", cfg)
    assert proc.returncode == 0, proc.stderr
    assert s3_client.head_object(Bucket=lab.bucket, Key=f"{PREFIX}/one.txt")
    assert "DEBUG" in proc.stderr  # -vv really logged at debug level
    aws_txt_untouched()

    log_path = lab.root / "daemon.log"
    with log_path.open("wb") as fh:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "s3syncd", "run", "-vv", "--config", str(cfg)],
            stdout=fh,
            stderr=fh,
            env=lab.env,
        )
    try:
        wait_until(lambda: lab.ctl(cfg, "status")[0] == 0, 30, "the daemon to serve")
        (lab.data / "two.txt").write_text("two")

        def queued() -> bool:
            code, out = lab.ctl(cfg, "pending", "--json")
            return code == 0 and "two.txt" in out

        wait_until(queued, 30, "the upload of two.txt to wait for approval")
        for args in (
            ("status", "--json"),
            ("status",),
            ("pending",),
            ("log", "-n", "2000"),
            ("sync",),
        ):
            code, out = lab.ctl(cfg, *args)
            assert code == 0, out
        code, out = lab.ctl(cfg, "approve", "--all")
        assert code == 0, out
        assert s3_client.head_object(Bucket=lab.bucket, Key=f"{PREFIX}/two.txt")
        lab.ctl(cfg, "status", "--json")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    log_text = log_path.read_text(errors="replace")
    assert " DEBUG " in log_text
    lab.outputs.append(("daemon -vv stderr", log_text))
    aws_txt_untouched()

    # --- error paths, each with -vv: fake keys and a session token in aws.txt (0600).
    lab.write_aws_txt(FAKE_KEY, FAKE_SECRET, FAKE_TOKEN)
    seen = (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns)

    def fails(what: str, config: Path, *words: str) -> str:
        proc = lab.sync(what, config)
        assert proc.returncode != 0, f"{what}: {proc.stdout}{proc.stderr}"
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert any(w in proc.stderr for w in words), f"{what}: unclear error: {last}"
        lab.error_paths.append(f"{what} ({last})")
        aws_txt_untouched()
        return proc.stderr

    fails("unknown key, with a token", cfg, "credentials", "access key", "Access Key", "denied")
    fails(
        "unreachable endpoint",
        lab.config("down", endpoint_url=f"http://127.0.0.1:{free_port()}"),
        "cannot reach",
    )
    # The server's key with a wrong secret: a signature mismatch, not an unknown key.
    lab.write_aws_txt(lab.server.access_key, FAKE_SECRET, None)
    seen = (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns)
    fails("wrong secret", cfg, "credentials", "signature", "Signature", "denied")
    # The daemon refuses to start on bad credentials, saying why.
    proc = subprocess.run(
        [sys.executable, "-m", "s3syncd", "run", "-vv", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=lab.env,
        timeout=120,
    )
    lab.outputs += [("daemon, wrong secret: stdout", proc.stdout)]
    lab.outputs += [("daemon, wrong secret: stderr", proc.stderr)]
    assert proc.returncode != 0 and "s3syncd:" in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("s3syncd:")]
    lab.error_paths.append(f"daemon with a wrong secret ({said[-1]})")
    aws_txt_untouched()

    # The server's keys again for the paths that need a working connection.
    lab.write_aws_txt(lab.server.access_key, server_secret, None)
    seen = (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns)
    fails("missing bucket", lab.config("nobucket", bucket="no-such-bucket-x9qz"), "bucket")
    s3_client.put_object(
        Bucket=lab.bucket,
        Key=f"{PREFIX}/.S3/versions.csv",
        Body=b'File,Edited By,Time Edited,Checksum\nok.txt,a,b\n"unterminated\n',
    )
    fails("malformed manifest", cfg, "versions.csv")
    fails(
        "bad config value",
        lab.config("badvalue", extra='[policy]\nmax_delete_percent = "lots"\n'),
        "max_delete_percent",
    )
    # A user who pastes a secret into the config file is told which key is wrong, not
    # shown the value.
    misplaced = lab.config("misplaced", aws_secret_access_key=CONFIG_SECRET)
    fails("secret pasted into the config", misplaced, "aws_secret_access_key")

    # --- aws.txt at 0644 is refused with a clear message (the environment's keys are then
    # used: the server's here, so the run itself works and proves the file was ignored).
    lab.write_aws_txt(FAKE_KEY, FAKE_SECRET, FAKE_TOKEN, mode=0o644)
    seen = (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns)
    s3_client.delete_object(Bucket=lab.bucket, Key=f"{PREFIX}/.S3/versions.csv")
    env_ok = dict(lab.env)
    env_ok.update(AWS_ACCESS_KEY_ID=lab.server.access_key, AWS_SECRET_ACCESS_KEY=server_secret)
    del env_ok["AWS_SESSION_TOKEN"]
    proc = subprocess.run(
        [sys.executable, "-m", "s3syncd", "sync", "-vv", "--yes", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env_ok,
        timeout=180,
    )
    lab.outputs += [("aws.txt 0644: stdout", proc.stdout), ("aws.txt 0644: stderr", proc.stderr)]
    assert proc.returncode == 0, proc.stderr
    assert "ignoring" in proc.stderr and "644" in proc.stderr and "chmod 600" in proc.stderr
    lab.error_paths.append("aws.txt at mode 0644")
    assert (lab.aws_txt.read_bytes(), lab.aws_txt.stat().st_mtime_ns) == seen
    assert stat.S_IMODE(lab.aws_txt.stat().st_mode) == 0o644

    # --- search everything for every secret.
    secrets = {
        "server secret": server_secret,
        "env secret": ENV_SECRET,
        "env token": ENV_TOKEN,
        "aws.txt secret": FAKE_SECRET,
        "aws.txt token": FAKE_TOKEN,
        "config secret": CONFIG_SECRET,
    }
    mine = {lab.aws_txt, misplaced}  # the files the test itself wrote the secrets into
    files = [p for p in lab.root.rglob("*") if p.is_file() and p not in mine]
    assert any(p.parent.name == "logs" for p in files), "no .S3/logs/ file was written"
    texts = list(lab.outputs)
    texts += [(str(p.relative_to(lab.root)), p.read_bytes().decode("latin-1")) for p in files]
    listing = s3_client.list_objects_v2(Bucket=lab.bucket, Prefix=f"{PREFIX}/")
    for obj in listing.get("Contents", []):
        body = s3_client.get_object(Bucket=lab.bucket, Key=obj["Key"])["Body"].read()
        texts.append((f"s3://{obj['Key']}", body.decode("latin-1")))
    leaks = [
        f"{name} in {where}" for where, text in texts for name, s in secrets.items() if s in text
    ]
    assert not leaks, "\n".join(leaks)
    with capsys.disabled():
        print(
            f"\nsecrets: {len(secrets)} secrets/tokens searched in {len(lab.outputs)} outputs, "
            f"{len(files)} files and {len(listing.get('Contents', []))} remote objects; "
            f"{len(lab.error_paths)} error paths provoked:\n  " + "\n  ".join(lab.error_paths)
        )
