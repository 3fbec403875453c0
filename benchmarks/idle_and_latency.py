"""Figures for the speed targets, printed, never asserted.

Starts its own SeaweedFS on 127.0.0.1 (tests/s3server.py) and measures:

1. one-shot `s3syncd sync --yes` of N small files (upload), then a no-change pass;
2. two daemons on one prefix: local change -> pending upload (target: debounce + 1 s),
   approved upload -> pending download on the other side (target: poll_interval + 1 s);
3. an idle daemon: S3 requests per poll and CPU seconds between polls.

Run: .venv/bin/python benchmarks/idle_and_latency.py [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from s3server import start_server  # noqa: E402

DEBOUNCE = 0.5
POLL = 2.0


def ctl(config: Path, *args: str) -> Any:
    """In-process calls over the real socket, so the figures are not process start-up."""
    from s3syncd.client import call
    from s3syncd.errors import SyncError

    sock = Path(os.environ["XDG_RUNTIME_DIR"]) / "s3syncd" / f"{config.stem}.sock"
    method, *rest = args
    params: dict[str, Any] = {}
    if method == "approve":
        params = {"ids": [a for a in rest if not a.startswith("-")]}
    try:
        result = call(sock, method, params)
    except SyncError:
        return None
    if method == "approve":
        ids = params["ids"]
        wait(
            lambda: all(
                a["state"] not in ("approved", "running")
                for a in call(sock, "status", {"ids": ids})["actions"].values()
            )
        )
    return result


def wait(cond: Any, timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what or cond}")


def write_config(path: Path, folder: str, user: str, endpoint: str, bucket: str) -> None:
    path.write_text(
        f'datafolder = "{folder}"\nuser_name = "{user}"\n[s3]\nbucket = "{bucket}"\n'
        f'prefix = "bench"\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'
        f"[daemon]\ndebounce = {DEBOUNCE}\npoll_interval = {POLL}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3sd-bench-", dir="/tmp"))
    server = start_server()
    client = server.client()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            XDG_RUNTIME_DIR=str(work),
        )
        os.environ.update(env)
        client.create_bucket(Bucket="bench")
        a_cfg, b_cfg = work / "a.toml", work / "b.toml"
        write_config(a_cfg, "a", "alice", server.endpoint, "bench")
        write_config(b_cfg, "b", "bob", server.endpoint, "bench")
        a = work / "a"
        (a / "d").mkdir(parents=True)
        for i in range(args.files):
            (a / "d" / f"f{i:05}.bin").write_bytes(os.urandom(4096))

        def sync(cfg: Path) -> float:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "s3syncd", "sync", "--config", str(cfg), "--yes"],
                env=env,
                check=True,
                capture_output=True,
            )
            return time.perf_counter() - t0

        print(f"one-shot upload of {args.files} x 4 KiB: {sync(a_cfg):.2f} s")
        print(f"one-shot no-change pass ({args.files} files): {sync(a_cfg):.2f} s")
        print(f"one-shot download on the other side: {sync(b_cfg):.2f} s")

        for cfg in (a_cfg, b_cfg):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(work / f"{cfg.stem}.log").open("wb"),
                )
            )
        for cfg in (a_cfg, b_cfg):
            wait(lambda c=cfg: ctl(c, "status", "--json"))

        def find(cfg: Path, kind: str, path: str) -> Any:
            items = ctl(cfg, "pending", "--json") or []
            return next((i for i in items if i["kind"] == kind and i["path"] == path), None)

        lat_local, lat_remote = [], []
        for n in range(5):
            name = f"lat{n}.txt"
            t0 = time.perf_counter()
            (a / name).write_text(f"{n}")
            item = wait(lambda nm=name: find(a_cfg, "upload", nm), what=f"A: upload {name}")
            lat_local.append(time.perf_counter() - t0)
            ctl(a_cfg, "approve", item["id"])
            t0 = time.perf_counter()
            item = wait(lambda nm=name: find(b_cfg, "download", nm), what=f"B: download {name}")
            lat_remote.append(time.perf_counter() - t0)
            ctl(b_cfg, "approve", item["id"])
        print(
            f"local change -> pending upload: max {max(lat_local):.2f} s "
            f"(target {DEBOUNCE + 1:.1f} s); all {[round(x, 2) for x in lat_local]}"
        )
        print(
            f"remote change -> pending download: max {max(lat_remote):.2f} s "
            f"(target {POLL + 1:.1f} s); all {[round(x, 2) for x in lat_remote]}"
        )

        s0 = ctl(a_cfg, "status", "--json")
        pid = s0["pid"]
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        c0 = cpu()
        threading.Event().wait(POLL * 5)  # an idle stretch of five polls is what we measure
        s1 = ctl(a_cfg, "status", "--json")
        used = cpu() - c0
        print(
            f"idle over {POLL * 5:.0f} s: {s1['remote_requests'] - s0['remote_requests']} S3 "
            f"requests (~{POLL * 5 / POLL:.0f} polls), {used:.3f} CPU-seconds "
            f"(includes {args.files}-file hourly jobs: none due)"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        client.close()
        server.stop()
        if args.keep:
            print(f"daemon logs: {work}/a.log, {work}/b.log")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
