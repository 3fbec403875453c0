"""Desktop notifications when new actions wait for approval (``[daemon] notify = true``).

Uses whatever the desktop already has: ``notify-send`` (Linux, libnotify) or ``osascript``
(macOS). Nothing is installed for it and nothing fails because of it: a missing tool or a
failing call is logged and the sync goes on.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

RUN_TIMEOUT = 5.0  # seconds; a hung notification daemon must not hold up syncing

Which = Callable[[str], str | None]


def command(
    title: str, body: str, which: Which = shutil.which, system: str = sys.platform
) -> list[str] | None:
    """The argv that shows ``title``/``body`` on this desktop, or None if nothing can."""
    if system == "darwin":
        exe = which("osascript")
        if exe is None:
            return None
        # AppleScript string literals share JSON's quoting of '"' and '\'.
        script = f"display notification {json.dumps(body)} with title {json.dumps(title)}"
        return [exe, "-e", script]
    exe = which("notify-send")
    if exe is None:
        return None
    return [exe, "--app-name=s3syncd", title, body]


class Notifier:
    """Tells the user, once per change of the queue, that new actions wait."""

    def __init__(self, enabled: bool, which: Which = shutil.which) -> None:
        self.enabled = enabled
        self.which = which
        self._missing_logged = False

    def new_pending(self, name: str, new: int, waiting: int) -> None:
        if not self.enabled or new <= 0:
            return
        title = f"s3syncd {name}: {new} new action(s) to approve"
        body = f"{waiting} waiting in all. Review with: s3syncctl pending"
        argv = command(title, body, self.which)
        if argv is None:
            if not self._missing_logged:
                log.warning("notify is on, but neither notify-send nor osascript is on PATH")
                self._missing_logged = True
            return
        try:
            subprocess.run(argv, check=True, timeout=RUN_TIMEOUT, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("desktop notification failed: %s", exc)
