"""Terminal rendering for the command-line tools: tables, progress bars, the live view.

The only module that imports ``rich``. Colours and cursor movement are used on a terminal
only, never with ``NO_COLOR`` set (no styling at all then), and never in ``--json`` output,
which does not pass through here. Off a terminal the same tables come out as plain aligned
text, unwrapped, so a pipe to ``grep`` sees one row per line.

Every name or message from the daemon is shown through :func:`s3syncd.model.shown` and put
into ``Text`` objects, never parsed as markup: a file called ``[red]x`` is printed as is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from s3syncd.model import shown

# Off a terminal nothing is wrapped: a row stays one line however long its path.
PLAIN_WIDTH = 10_000
SKIPPED_SHOWN = 20

Frame = Group  # what a view renders to; other modules pass it along without knowing rich

KIND_STYLES = {
    "upload": "green",
    "download": "cyan",
    "delete_remote": "red",
    "delete_local": "red",
    "conflict": "yellow bold",
}
STATE_STYLES = {"running": "green", "syncing": "cyan", "paused": "yellow"}


def human_size(size: Any) -> str:
    from s3syncd.interactive import human_size as size_of

    return size_of(size if isinstance(size, int) else None)


def colour_off(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``NO_COLOR`` is set to anything non-empty (https://no-color.org)."""
    return bool((os.environ if environ is None else environ).get("NO_COLOR"))


def make_console(stream: TextIO | None = None) -> Console:
    """A console on ``stream`` (stdout by default) that styles only a colour terminal."""
    out = sys.stdout if stream is None else stream
    tty = out.isatty()
    return Console(
        file=out,
        force_terminal=tty,  # FORCE_COLOR must not put escapes into a pipe
        no_color=colour_off(),
        color_system="auto" if tty and not colour_off() else None,
        width=None if tty else PLAIN_WIDTH,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=not tty,
    )


def emit(renderable: RenderableType, stream: TextIO | None = None) -> None:
    """Print ``renderable``; off a terminal without the padding rich puts after a row."""
    console = make_console(stream)
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.file.write(text + "\n")
    console.file.flush()


def heading(title: str) -> Text:
    return Text(title, style="bold cyan")


# --- status -----------------------------------------------------------------------------


def _line(label: str, value: str | Text, style: str = "") -> Text:
    text = Text(f"  {label:<11} ", style=style or "bold")
    text.append(value if isinstance(value, Text) else Text(value))
    return text


def status_view(st: Mapping[str, Any], errors_shown: int = 5) -> Group:
    """What ``s3syncctl status`` prints: one labelled line per fact."""
    state = str(st["state"])
    head = Text(f"s3syncd {shown(st['name'])}: ", style="bold")
    head.append(state, style=STATE_STYLES.get(state, ""))
    if not st.get("ready", True):
        head.append(" (starting: first scan and poll under way)", style="yellow")
    lines: list[Text] = [
        head,
        _line("folder", shown(st["datafolder"])),
        _line("remote", f"{shown(st['remote'])} (as {shown(st['user'])})"),
    ]
    connected = st.get("connected", True)
    poll = Text(f"{st['last_poll'] or 'never'} ({shown(st['last_poll_result'])}; ")
    poll.append("connected" if connected else "NOT CONNECTED", "green" if connected else "red bold")
    poll.append(")")
    lines.append(_line("last poll", poll))
    waiting = Text()
    waiting.append(f"{st['pending']} waiting for approval", "yellow" if st["pending"] else "")
    waiting.append(f", {st['approved']} approved, ")
    waiting.append(f"{st['failed']} failed", "red" if st["failed"] else "")
    lines.append(_line("pending", waiting))
    counts = st.get("counts", {})
    lines.append(
        _line(
            "files",
            f"{counts.get('local_files', 0)} local, {counts.get('remote_files', 0)} remote, "
            f"{counts.get('skipped', 0)} skipped",
        )
    )
    if not st.get("conditional_writes", True):
        lines.append(
            _line(
                "WARNING",
                "the remote ignores conditional writes; using read-back checks",
                "yellow bold",
            )
        )
    if st.get("held"):
        lines.append(_line("HELD", shown(st["held"]), "red bold"))
    tr = st.get("transfers", {})
    if tr.get("active"):
        lines.append(
            _line(
                "transfers",
                f"{len(tr['active'])} running, {human_size(tr['bytes_done'])} of "
                f"{human_size(tr['bytes_total'])}",
            )
        )
    skipped = st.get("skipped") or []
    if skipped:
        lines.append(_line("not synced", f"{len(skipped)}:", "yellow"))
        for item in skipped[:SKIPPED_SHOWN]:
            lines.append(Text(f"    {shown(item['path'])}  ({shown(item['reason'])})"))
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(
                Text(f"    ... and {len(skipped) - SKIPPED_SHOWN} more (see 'status --json')")
            )
    errors = st.get("errors", [])
    if errors and errors_shown:
        lines.append(_line("errors", f"{len(errors)} (latest last):", "red"))
        for e in errors[-errors_shown:]:
            lines.append(Text(f"    {e['time']}  {shown(e['message'])}"))
    return Group(*lines)


# --- the queue --------------------------------------------------------------------------


def pending_table(items: Sequence[Mapping[str, Any]], tty: bool = False) -> Table:
    """The approval queue; a rule under the header on a terminal, bare columns elsewhere."""
    table = Table(
        box=box.SIMPLE_HEAD if tty else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if tty else "",
        padding=(0, 1) if tty else (0, 2, 0, 0),
    )
    for name in ("ID", "ACTION", "PATH", "SIZE", "WHO", "WHEN", "WHY"):
        table.add_column(name, justify="right" if name == "SIZE" else "left", overflow="fold")
    for it in items:
        kind = Text(str(it["kind"]), style=KIND_STYLES.get(str(it["kind"]), ""))
        if it["state"] != "pending":
            kind.append(f" ({it['state']})", style="red" if it["state"] == "failed" else "dim")
        table.add_row(
            Text(str(it["id"]), style="bold"),
            kind,
            # A move shows its old name too: "old/path -> new/path".
            Text(
                f"{shown(it['source'])} -> {shown(it['path'])}"
                if it.get("source")
                else shown(it["path"])
            ),
            Text(human_size(it["size"])),
            Text(shown(it["edited_by"] or "-")),
            Text((it["queued_at"] or "")[:19].replace("T", " ")),
            Text(shown(it["error"] or it["reason"]), style="red" if it["error"] else ""),
        )
    return table


def show_pending(items: Sequence[Mapping[str, Any]], stream: TextIO | None = None) -> None:
    out = sys.stdout if stream is None else stream
    if not items:
        emit(Text("Nothing waits for approval."), out)
        return
    emit(pending_table(items, tty=out.isatty() and not colour_off()), out)


# --- progress of transfers --------------------------------------------------------------


class TransferBar:
    """Bytes, files, rate and ETA of a batch of transfers, drawn on a terminal only.

    Off a terminal it draws nothing: the per-file result lines are the record there.
    ``advance``/``file_done`` may be called from transfer threads (rich locks the task).
    """

    def __init__(
        self,
        files: int,
        total_bytes: int,
        label: str = "transfers",
        stream: TextIO | None = None,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.files_total = files
        self.files_done = 0
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=make_console(self.stream),
            # Result lines printed meanwhile go above the bar, but only when they go to the
            # same terminal: a piped stdout must not be diverted onto stderr.
            redirect_stdout=self.enabled and sys.stdout.isatty(),
            redirect_stderr=False,
            disable=not self.enabled,
        )
        self._task: TaskID = self._progress.add_task(
            label, total=max(total_bytes, 0), files=self._files()
        )

    def _files(self) -> str:
        return f"{self.files_done}/{self.files_total} files"

    def __enter__(self) -> TransferBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def file_done(self) -> None:
        self.files_done += 1
        self._progress.update(self._task, files=self._files())

    def update(self, bytes_done: int, bytes_total: int, files_done: int) -> None:
        """Set the figures from a status reply (the daemon counts; we only draw)."""
        self.files_done = files_done
        self._progress.update(
            self._task, completed=bytes_done, total=max(bytes_total, 0), files=self._files()
        )


# --- the live view ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """Transfer rate and time left, estimated by the watcher from successive samples."""

    bytes_per_second: float | None = None
    seconds_left: float | None = None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def watch_view(
    st: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    events: Sequence[str],
    rate: Rate,
    tty: bool,
    rows: int = 10,
) -> Group:
    """One frame of ``s3syncctl watch``: status, transfers in flight, queue, recent events."""
    parts: list[RenderableType] = [status_view(st, errors_shown=0)]
    tr = st.get("transfers", {})
    active = list(tr.get("active") or [])
    parts.append(Text("\nTransfers in flight", style="bold"))
    if active:
        done, total = int(tr["bytes_done"]), max(int(tr["bytes_total"]), 0)
        bar = Table.grid(padding=(0, 1))
        speed = (
            f"{human_size(int(rate.bytes_per_second))}/s"
            if rate.bytes_per_second is not None
            else "? /s"
        )
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=min(done, max(total, 1)), width=30),
            Text(f"{human_size(done)}/{human_size(total)}  {speed}  ETA {_eta(rate.seconds_left)}"),
        )
        parts.append(bar)
        for path in active[:rows]:
            parts.append(Text(f"  {shown(path)}"))
        if len(active) > rows:
            parts.append(Text(f"  ... and {len(active) - rows} more"))
    else:
        parts.append(Text("  none", style="dim"))
    waiting = sum(1 for it in items if it["state"] == "pending")
    failed = sum(1 for it in items if it["state"] == "failed")
    busy = len(items) - waiting - failed
    parts.append(
        Text(
            f"\nQueue: {waiting} waiting for approval, {busy} approved or running, {failed} failed",
            style="bold",
        )
    )
    if items:
        parts.append(pending_table(items[:rows], tty=tty))
        if len(items) > rows:
            parts.append(Text(f"  ... and {len(items) - rows} more (s3syncctl pending)"))
    else:
        parts.append(Text("  nothing", style="dim"))
    parts.append(Text("\nRecent events", style="bold"))
    for line in events or ["(none)"]:
        # One line each: a long log line is cut at the terminal's edge, not wrapped.
        parts.append(Text(f"  {shown(line)}", no_wrap=True, overflow="ellipsis"))
    parts.append(Text("\nq or Ctrl-C quits", style="dim"))
    return Group(*parts)


@contextmanager
def live(stream: TextIO | None = None) -> Iterator[Live]:
    """A region of the terminal redrawn in place; left showing the last frame on exit."""
    console = make_console(sys.stdout if stream is None else stream)
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as view:
        yield view
