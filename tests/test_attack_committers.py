"""Attack: three real processes commit to one S3 prefix at the same time, round after round.

Each round every process gets 50 new files in its own data folder and runs
``s3syncd sync --yes`` (a separate Python process each, started together), so their
manifest commits race. Afterwards every file ever written has its row in the remote
``versions.csv`` with the right checksum: no commit dropped another's rows.

Large run: ``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_committers.py -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import unique_name
from sites import md5

from s3syncd import tables

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
PROCESSES = 3
ROUNDS = 5 * SCALE
FILES = 50
TIMEOUT = 300.0
REPO = Path(__file__).resolve().parents[1]
STALE = "changed on the remote since planned; re-planning"


def write_config(tmp: Path, name: str, server: S3Server, bucket: str, prefix: str) -> Path:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f'datafolder = "{name}/Data"\nplatform = "S3"\nuser_name = "{name}"\n'
        f'[s3]\nbucket = "{bucket}"\nprefix = "{prefix}"\n'
        f'endpoint_url = "{server.endpoint}"\nregion = "{server.region}"\n'
    )
    (tmp / name / "Data").mkdir(parents=True)
    return cfg


def test_concurrent_committers_keep_every_row(
    s3_server: S3Server, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    prefix = unique_name("commit")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3SYNCD_", "AWS_"))} | {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "PYTHONPATH": str(REPO),
    }
    names = [f"user{k}" for k in range(PROCESSES)]
    configs = {n: write_config(tmp_path, n, s3_server, s3_bucket, prefix) for n in names}
    written: dict[str, str] = {}  # path -> MD5, everything any process ever wrote
    checked = replans = retries = 0
    for rnd in range(1, ROUNDS + 1):
        for n in names:
            for i in range(FILES):
                rel = f"{n}/r{rnd}/f{i:03d}.txt"
                data = f"{n} round {rnd} file {i}\n".encode()
                path = tmp_path / n / "Data" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written[rel] = md5(data)
        procs = {
            n: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "s3syncd",
                    "sync",
                    "-v",
                    "--yes",
                    "--config",
                    str(configs[n]),
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n in names
        }
        for n, proc in procs.items():
            out, _ = proc.communicate(timeout=TIMEOUT)
            errors = [line for line in out.splitlines() if "[ERR]" in line]
            # A process may list another's uploads before their commit and plan downloads
            # that the commit then makes stale: those re-plan next pass, nothing else fails.
            replans += sum(1 for line in errors if line.endswith(STALE))
            retries += out.count("changed under us; retrying")  # a commit lost a race
            assert all(line.endswith(STALE) for line in errors), f"round {rnd}, {n}:\n{out}"
            assert "could not be updated" not in out and "Traceback" not in out, out
            assert proc.returncode == (1 if errors else 0), f"round {rnd}, {n}:\n{out}"
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"{prefix}/.S3/versions.csv")["Body"]
        rows = tables.parse_table(body.read(), "remote versions.csv")
        missing = sorted(p for p in written if p not in rows)
        assert not missing, f"round {rnd}: {len(missing)} row(s) lost, e.g. {missing[:5]}"
        wrong = sorted(p for p, m in written.items() if rows[p].checksum != m)
        assert not wrong, f"round {rnd}: wrong checksums for {wrong[:5]}"
        assert set(rows) == set(written)
        checked += len(written)
    print(
        f"committers: processes={PROCESSES} rounds={ROUNDS} files_per_round={FILES * PROCESSES} "
        f"rows={len(written)} row_checks={checked} stale_replans={replans} commit_retries={retries}"
    )
    assert len(written) == PROCESSES * FILES * ROUNDS
