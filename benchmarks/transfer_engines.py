"""Bulk transfer figures per transfer engine, beside rclone in the same run.

Starts its own SeaweedFS on 127.0.0.1 (tests/s3server.py), makes N small files, and for
each round, interleaved: a one-shot `s3syncd sync --yes` upload of the folder to a fresh
prefix and a download of it into an empty folder, once per engine (``[s3]
transfer_engine = boto3`` and ``crt``), then `rclone copy --transfers 16` both ways if
rclone is on PATH. Prints medians of wall and CPU seconds (the child's user+sys): on a
shared machine the ratio to rclone within one run is the figure to read. Never asserts.

Run: .venv/bin/python benchmarks/transfer_engines.py [--files 2000] [--size 4096]
     [--rounds 3] [--big-mib 0] [--profile DIR] [--engines boto3,crt]
     [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from s3server import S3Server, start_server  # noqa: E402

BUCKET = "bench-engines"
ENGINES = ("boto3", "crt")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of ``cmd``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def make_files(folder: Path, count: int, size: int) -> None:
    for i in range(count):
        sub = folder / f"d{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(size))


class Bench:
    def __init__(self, server: S3Server, work: Path, profile: Path | None) -> None:
        self.server = server
        self.work = work
        self.profile = profile
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3SYNCD_"))}
        self.env.update(
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(work / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
            XDG_RUNTIME_DIR=str(work),
            RCLONE_CONFIG=str(work / "rclone.conf"),
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Other",
            RCLONE_CONFIG_BENCH_ENV_AUTH="false",
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.secret_key,
            RCLONE_CONFIG_BENCH_ENDPOINT=server.endpoint,
            RCLONE_CONFIG_BENCH_REGION=server.region,
        )
        (work / "rclone.conf").write_text("")

    def sync(self, folder: Path, prefix: str, engine: str, tag: str) -> tuple[float, float]:
        cfg = self.work / f"{uuid.uuid4().hex}.toml"
        cfg.write_text(
            f"datafolder = {json.dumps(str(folder))}\nuser_name = 'bench'\n"
            f"[s3]\nbucket = {json.dumps(BUCKET)}\nprefix = {json.dumps(prefix)}\n"
            f"endpoint_url = {json.dumps(self.server.endpoint)}\n"
            f"region = {json.dumps(self.server.region)}\n"
            f"transfer_engine = {json.dumps(engine)}\n"
        )
        run = [sys.executable]
        if self.profile is not None:
            # py-spy (pip install py-spy) samples every thread, not only the main one.
            self.profile.mkdir(parents=True, exist_ok=True)
            out = self.profile / f"{tag}-{engine}.txt"
            spy = ["py-spy", "record", "-f", "raw", "-r", "250", "--nonblocking", "-o", str(out)]
            run = [*spy, "--", *run]
        return timed([*run, "-m", "s3syncd", "sync", "--config", str(cfg), "--yes"], self.env)

    def rclone(self, src: str, dst: str) -> tuple[float, float]:
        return timed(["rclone", "copy", "--transfers", "16", src, dst], self.env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=0, help="also one file of this size")
    parser.add_argument("--profile", type=Path, help="write py-spy samples of each sync here")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--workers", type=int, help="S3SYNCD_WORKERS (default: the config's)")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    with tempfile.TemporaryDirectory(prefix="s3sd-engines-") as tmp:
        work = Path(tmp)
        server = start_server(work)
        try:
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            client.close()
            bench = Bench(server, work, args.profile)
            if args.workers:
                bench.env["S3SYNCD_WORKERS"] = str(args.workers)
            have_rclone = shutil.which("rclone") is not None
            cases: list[tuple[str, int, int]] = []
            if args.files:
                cases.append(("small", args.files, args.size))
            if args.big_mib:
                cases.append(("big", 1, args.big_mib * 1024 * 1024))
            results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
            for case, count, size in cases:
                source = work / f"source-{case}"
                make_files(source, count, size)
                for rnd in range(args.rounds):
                    for tool in [*engines, *(["rclone"] if have_rclone else [])]:
                        prefix = f"{case}-{tool}-{rnd}"
                        down = work / f"down-{prefix}"
                        if tool == "rclone":
                            up = bench.rclone(str(source), f"bench:{BUCKET}/{prefix}")
                            got = bench.rclone(f"bench:{BUCKET}/{prefix}", str(down))
                        else:
                            folder = work / f"up-{prefix}"
                            shutil.copytree(source, folder)
                            up = bench.sync(folder, prefix, tool, f"{case}-up-{rnd}")
                            down.mkdir()
                            got = bench.sync(down, prefix, tool, f"{case}-down-{rnd}")
                            shutil.rmtree(folder)
                        shutil.rmtree(down)
                        results.setdefault((case, "up", tool), []).append(up)
                        results.setdefault((case, "down", tool), []).append(got)
                        print(f"{case} round {rnd} {tool}: up {up[0]:.2f}s down {got[0]:.2f}s")
            print()
            print(f"{'case':<24} {'tool':<8} {'wall s':>8} {'cpu s':>8} {'x rclone':>9}")
            for case, count, size in cases:
                for way in ("up", "down"):
                    label = f"{count} x {size} B {way}"
                    base = results.get((case, way, "rclone"))
                    base_wall = statistics.median(w for w, _ in base) if base else None
                    for tool in [*engines, "rclone"]:
                        runs = results.get((case, way, tool))
                        if not runs:
                            continue
                        wall = statistics.median(w for w, _ in runs)
                        cpu = statistics.median(c for _, c in runs)
                        ratio = f"{wall / base_wall:.2f}" if base_wall else "-"
                        print(f"{label:<24} {tool:<8} {wall:>8.2f} {cpu:>8.2f} {ratio:>9}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
