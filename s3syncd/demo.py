"""``s3syncd demo``: two people, one shared folder, two real daemons, no AWS account.

The remote is a plain folder (the ``Local`` platform), so the demo runs anywhere Python
does. It prints every command before running it, exactly as typed in a shell from the
demo folder, so each step can be repeated by hand; it stops the daemons and removes the
folder on the way out, Ctrl-C included (``--keep`` leaves the folder to explore).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd.errors import ConfigError, SyncError

log = logging.getLogger(__name__)

PEOPLE = ("ana", "ben")
WAIT = 60.0  # seconds for a step's effect; generous for a loaded machine
STOP_WAIT = 30.0

Say = Callable[[str], None]


class DemoError(SyncError):
    """The demo could not complete a step."""

    code = "demo"


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    home: Path  # <demo>/<name>, holding the config and Data/

    @property
    def config(self) -> str:
        return f"{self.name}/s3syncd.toml"  # as typed from the demo folder

    @property
    def data(self) -> Path:
        return self.home / "Data"


def _tool(name: str) -> list[str]:
    """The installed console script beside this Python, else the module behind it."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = "s3syncd.ctl" if name == "s3syncctl" else "s3syncd.cli"
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


class Demo:
    def __init__(self, base: Path, say: Say, pause: Callable[[], None]) -> None:
        self.base = base
        self.say = say
        self.pause = pause
        self.people = [Person(n, base / n) for n in PEOPLE]
        self.daemons: list[subprocess.Popen[bytes]] = []

    # --- printing and running --------------------------------------------------------

    def step(self, title: str) -> None:
        from s3syncd import display

        self.say("")
        display.emit(display.heading(title))
        self.pause()

    def show(self, argv: list[str]) -> None:
        self.say("$ " + " ".join(shlex.quote(a) for a in argv))

    def run(self, argv: list[str], echo: bool = True, check: bool = True) -> str:
        if echo:
            self.show(argv)
        tool = _tool(argv[0])
        proc = subprocess.run(
            [*tool, *argv[1:]], cwd=self.base, capture_output=True, text=True, check=False
        )
        if echo:
            for line in (proc.stdout + proc.stderr).rstrip("\n").splitlines():
                self.say(line)
        if check and proc.returncode != 0:
            raise DemoError(f"'{' '.join(argv)}' failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def ctl(self, who: Person, *args: str, echo: bool = True) -> str:
        return self.run(["s3syncctl", "-c", who.config, *args], echo=echo)

    def pending(self, who: Person) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.ctl(who, "pending", "--json", echo=False))
        return items

    def wait_pending(self, who: Person, path: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for item in self.pending(who):
                if item["path"] == path and item["state"] == "pending":
                    return item
            time.sleep(0.2)  # the daemons work at their own pace; we look again shortly
        raise DemoError(f"{who.name}'s daemon did not propose {path} within {WAIT:.0f} s")

    # --- the story --------------------------------------------------------------------

    def setup(self) -> None:
        remote = self.base / "shared"
        remote.mkdir()
        # The daemons serve their sockets only from a folder no one else can enter.
        (self.base / "run").mkdir(mode=0o700)
        for p in self.people:
            p.data.mkdir(parents=True)
            (p.home / "s3syncd.toml").write_text(
                f"# {p.name}'s copy of the team folder; the remote is ../shared\n"
                f'datafolder = "Data"\nplatform = "Local"\nuser_name = "{p.name}"\n'
                f'name = "demo-{p.name}"\n\n[local]\nremote_path = "../shared"\n\n'
                "[daemon]\ndebounce = 0.3\npoll_interval = 1\n"
                f'socket = "{self.base / "run" / (p.name + ".sock")}"\n',
                encoding="utf-8",
            )

    def start_daemons(self) -> None:
        self.step("1. Start a daemon for each person (both sync with the folder 'shared/')")
        for p in self.people:
            argv = ["s3syncd", "run", "-c", p.config]
            self.say("$ " + " ".join(argv) + f" 2> {p.name}/daemon.log &")
            with (p.home / "daemon.log").open("wb") as err:
                self.daemons.append(
                    subprocess.Popen(
                        [*_tool("s3syncd"), *argv[1:]],
                        cwd=self.base,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        # Ctrl-C reaches the demo only; it stops the daemons itself.
                        start_new_session=True,
                    )
                )
            self.say(f"[{len(self.daemons)}] {self.daemons[-1].pid}")  # as a shell shows a job
        for p in self.people:
            deadline = time.monotonic() + WAIT
            while subprocess.run(
                [*_tool("s3syncctl"), "-c", p.config, "status"],
                cwd=self.base,
                capture_output=True,
                check=False,
            ).returncode:
                if time.monotonic() > deadline or any(d.poll() is not None for d in self.daemons):
                    log_text = (p.home / "daemon.log").read_text(errors="replace")[-2000:]
                    raise DemoError(f"{p.name}'s daemon did not start:\n{log_text}")
                time.sleep(0.2)  # waiting for the socket to answer
        self.ctl(self.people[0], "status")

    def walk(self) -> None:
        ana, ben = self.people
        name = "results.csv"
        self.step(f"2. Ana saves a file in her folder: {ana.name}/Data/{name}")
        self.say(f"$ printf 'sample,value\\nA1,0.42\\n' > {ana.name}/Data/{name}")
        (ana.data / name).write_text("sample,value\nA1,0.42\n", encoding="utf-8")

        self.step("3. Her daemon noticed it; the upload waits for her approval")
        item = self.wait_pending(ana, name)
        self.ctl(ana, "pending")
        if self._has_diff():
            self.step("4. What exactly would change")
            self.ctl(ana, "diff", item["id"])
        else:
            self.step("4. (s3syncctl diff is not in this version; skipped)")
        self.step("5. Ana approves; the file goes to the shared remote")
        self.ctl(ana, "approve", item["id"])

        self.step("6. Ben's daemon sees the new version; the download waits for him")
        self.wait_pending(ben, name)
        self.ctl(ben, "pending")

        self.step("7. Ben approves; the file lands in his folder")
        self.ctl(ben, "approve", "--all")
        self.say(f"$ cat {ben.name}/Data/{name}")
        for line in (ben.data / name).read_text(encoding="utf-8").splitlines():
            self.say(line)

    def _has_diff(self) -> bool:
        # Built in parallel with this demo: use it only where this version has it.
        usage = self.run(["s3syncctl", "--help"], echo=False)
        return any(line.strip().startswith("diff ") for line in usage.splitlines())

    def stop(self) -> None:
        for d in self.daemons:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
        for d in self.daemons:
            try:
                d.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("daemon %d did not stop in %.0f s; killing it", d.pid, STOP_WAIT)
                d.kill()
                d.wait()


@contextmanager
def _demo_folder(where: Path | None, keep: bool) -> Iterator[Path]:
    if where is None:
        base = Path(tempfile.mkdtemp(prefix="s3syncd-demo-"))
    else:
        base = where.expanduser().resolve()
        if base.exists() and any(base.iterdir()):
            raise ConfigError(f"{base} is not empty; give a new or empty folder to --dir")
        base.mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def run_demo(where: Path | None, keep: bool, interactive: bool, say: Say) -> None:
    """The whole walk-through; daemons stopped and the folder removed however it ends."""

    def pause() -> None:
        if interactive:
            input("   (Enter to run it, Ctrl-C to stop) ")

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # a terminated demo cleans up like an interrupted one

    signal.signal(signal.SIGTERM, on_term)
    try:
        with _demo_folder(where, keep) as base:
            demo = Demo(base, say, pause)
            say(f"s3syncd demo in {base}: Ana and Ben share the folder 'shared/'.")
            say(f"To repeat a step by hand:  cd {shlex.quote(str(base))}")
            demo.setup()
            try:
                demo.start_daemons()
                demo.walk()
            finally:
                demo.stop()
            say("")
            say("Done: Ana's file went through the queue to Ben, with both approvals.")
            if keep:
                say(f"The folders stay in {base}; start the daemons again as shown above.")
            else:
                say("Daemons stopped, demo folder removed (--keep leaves it to explore).")
    finally:
        signal.signal(signal.SIGTERM, previous)
