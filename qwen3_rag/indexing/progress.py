"""Progress lines of an index run, and the stop request that ends it between writes.

Both engines report through :class:`Progress`: chunks written (and, where the work is spread
over workers, read and embedded), throughput, files read and an ETA, on stderr. A terminal gets
one line rewritten in place; a pipe or a file gets a line every :data:`PROGRESS_SECONDS`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_SECONDS = 5.0
#: Seconds between rewrites of the line on a terminal.
TTY_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on.

    Example:
        >>> format_duration(75), format_duration(3725)
        ('1:15', '1:02:05')
    """
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """The progress line of an index run, on stderr.

    Args:
        enabled: Show anything at all.
        files: Files the run reads.
    """

    def __init__(self, enabled: bool, files: int) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.files = files
        self.started = time.monotonic()
        self.last = 0.0
        self.width = 0

    @property
    def interval(self) -> float:
        """Seconds between lines: short on a terminal, :data:`PROGRESS_SECONDS` otherwise."""
        return TTY_SECONDS if self.tty else PROGRESS_SECONDS

    def update(
        self,
        *,
        written: int,
        files_read: int,
        remaining: float | None = None,
        read: int | None = None,
        embedded: int | None = None,
        final: bool = False,
    ) -> None:
        """Show the current state (throttled unless ``final``).

        Args:
            written: Chunks embedded and stored so far.
            files_read: Files read so far.
            remaining: Chunks still to write, as far as known (for the ETA); None: unknown.
            read: Chunks read so far, where reading runs ahead of writing (Ray).
            embedded: Chunks embedded so far, where storing trails embedding (Ray).
            final: The last line: "done" instead of an ETA, never throttled. The run's
                duration is the caller's to report (the CLI's summary line), once.
        """
        if not self.enabled:
            return
        if not final and not (written or read or embedded):
            return  # nothing done yet: no rate, no ETA, nothing worth a line
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = written / elapsed
        if read is not None and embedded is not None:
            head = f"index: {read:,} chunks read, {embedded:,} embedded, {written:,} written"
        else:
            head = f"index: {written:,} chunks written"
        line = f"{head}, {rate:,.1f} chunks/s, {files_read}/{self.files} files read"
        if final:
            line += ", done"
        elif remaining is not None and rate > 0:  # no ETA until something is written
            line += f", ETA {format_duration(max(remaining, 0) / rate)}"
        self.emit(line, final)

    def emit(self, line: str, final: bool) -> None:
        """Write one line: rewritten in place on a terminal, appended otherwise."""
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.width) + ("\n" if final else ""))
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


@dataclass
class StopRequest:
    """Set (by a signal handler, or any thread) to stop a run after the write in flight.

    Attributes:
        signal_name: What asked for the stop (``"SIGTERM"``...), None while running.
    """

    signal_name: str | None = None

    def request(self, reason: str) -> None:
        """Ask the run to stop at its next safe point."""
        self.signal_name = reason


@contextlib.contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM by finishing the current write, then stopping.

    A second signal stops at once (``KeyboardInterrupt``). The previous handlers come back on
    exit. Outside the main thread signals cannot be handled, and the defaults stay.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signal_name is not None:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
