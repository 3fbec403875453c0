"""``s3syncctl watch``: a live view of the queue, transfers in flight and recent events.

It only reads what any client may read (``status``, ``pending``, ``log``) about twice a
second, and draws through :mod:`s3syncd.display`. Keys are read in cbreak mode so ``q``
quits without Enter; the terminal's mode is restored however the view ends.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from s3syncd import display
from s3syncd.display import Rate
from s3syncd.errors import EXIT_OK

log = logging.getLogger(__name__)

EVENTS_SHOWN = 8
RATE_WINDOW = 5.0  # seconds of samples behind the rate: steady, yet quick to follow a change


class Caller(Protocol):
    def call(self, method: str, params: dict[str, Any] | None = None) -> Any: ...


class RateMeter:
    """Bytes per second and time left, from the daemon's running byte counts."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def sample(self, now: float, bytes_done: int, bytes_total: int) -> Rate:
        if self.samples and bytes_done < self.samples[-1][1]:
            self.samples.clear()  # a new batch started from zero
        self.samples.append((now, bytes_done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        first_t, first_b = self.samples[0]
        if now - first_t <= 0 or bytes_done == first_b:
            return Rate()
        speed = (bytes_done - first_b) / (now - first_t)
        return Rate(speed, max(bytes_total - bytes_done, 0) / speed)


class Keys:
    """Single key presses from a terminal stdin; elsewhere a plain wait."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.fd = stream.fileno() if stream.isatty() else None
        self._saved: list[Any] | None = None

    def __enter__(self) -> Keys:
        if self.fd is not None:
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keeps ISIG, so Ctrl-C still interrupts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout: float) -> str | None:
        """The key pressed within ``timeout`` seconds, if any."""
        if self.fd is None:
            time.sleep(timeout)  # nothing to read: the pause between frames is the point
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        return os.read(self.fd, 1).decode(errors="replace")


def frame(ctl: Caller, meter: RateMeter, now: float, tty_out: bool) -> display.Frame:
    st = ctl.call("status")
    items = ctl.call("pending")
    events = ctl.call("log", {"n": EVENTS_SHOWN})["lines"]
    tr = st.get("transfers", {})
    rate = meter.sample(now, int(tr.get("bytes_done", 0)), int(tr.get("bytes_total", 0)))
    return display.watch_view(st, items, events, rate, tty=tty_out)


def watch(
    ctl: Caller,
    *,
    once: bool = False,
    interval: float = 0.5,
    out: TextIO | None = None,
    keys_in: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Redraw until ``q`` or Ctrl-C; one frame with ``once`` or off a terminal."""
    stream = sys.stdout if out is None else out
    meter = RateMeter()
    tty_out = stream.isatty() and not display.colour_off()
    if once or not stream.isatty():
        display.emit(frame(ctl, meter, clock(), tty_out), stream)
        return EXIT_OK
    try:
        with Keys(sys.stdin if keys_in is None else keys_in) as keys, display.live(stream) as view:
            while True:
                view.update(frame(ctl, meter, clock(), tty_out), refresh=True)
                if (keys.wait(interval) or "").lower() == "q":
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a live view is left, not an error
    return EXIT_OK
