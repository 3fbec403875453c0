"""Figures for moves (issue 7, item 6), printed, never asserted.

Starts its own SeaweedFS on 127.0.0.1 (tests/s3server.py) and times one-shot
`s3syncd sync --yes` passes of one folder of N files of S bytes:

1. upload of the N files (first pass);
2. the folder renamed: N moves (server-side copies + soft deletes), uploads counted;
3. re-upload: N new files of the same size in another folder (what the rename cost
   before moves: N uploads, plus N remote deletes the brake held).

Run: .venv/bin/python benchmarks/moves.py [--files 1000] [--size 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from s3server import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3sd-bench-mv-", dir="/tmp"))
    server = start_server()
    try:
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            XDG_RUNTIME_DIR=str(work),
        )
        server.client().create_bucket(Bucket="bench")
        cfg = work / "a.toml"
        cfg.write_text(
            f'datafolder = "a"\nuser_name = "alice"\n[s3]\nbucket = "bench"\n'
            f'prefix = "mv"\nendpoint_url = "{server.endpoint}"\nregion = "us-east-1"\n'
        )
        data = work / "a"

        def fill(folder: str) -> None:
            (data / folder).mkdir(parents=True)
            for i in range(args.files):
                (data / folder / f"f{i:05}.bin").write_bytes(os.urandom(args.size))

        def sync() -> tuple[float, str]:
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "s3syncd", "sync", "--config", str(cfg), "--yes"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            return time.perf_counter() - t0, done.stdout

        def count(out: str, kind: str) -> int:
            return sum(1 for line in out.splitlines() if f"[ok ] {kind} " in line)

        what = f"{args.files} x {args.size} B"
        fill("d")
        first, out = sync()
        print(f"upload of {what}: {first:.2f} s ({count(out, 'upload')} uploads)")
        os.rename(data / "d", data / "e")
        moved, out = sync()
        print(
            f"folder rename of {what}: {moved:.2f} s "
            f"({count(out, 'move')} moves, {count(out, 'upload')} uploads)"
        )
        fill("g")
        again, out = sync()
        print(f"re-upload of {what}: {again:.2f} s ({count(out, 'upload')} uploads)")
        print(f"rename / re-upload: {moved / again:.2f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
