"""Host-side pacing of a run: chunks that follow the clock, and interrupts that keep every generation.

A compiled chunk cannot be stopped from Python while it runs, so a run that writes a directory
or shows progress advances in *sub-chunks* of about ``seconds`` each (the same compiled program,
fewer steps; the numbers do not depend on where chunks end) and saves (trajectory + checkpoint)
every ``chunk_size`` generations. Ctrl-C or SIGTERM during the loop only sets a flag: the run
finishes the sub-chunk in flight, saves every completed generation, then raises
``KeyboardInterrupt``. A second signal ends the process at once (exit status 130), even while
the main thread is blocked in compiled code or in compilation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

INTERRUPTED_EXIT = 130


class Pace:
    """How many generations the next sub-chunk runs, so that each takes about ``seconds``.

    ``seconds=None``: whole chunks. The first sub-chunk is one generation (its time includes
    compilation), the next one too (its time measures a generation); then the measured rate.
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.per_generation: float | None = None
        self.calls = 0

    def steps(self, room: int) -> int:
        if self.seconds is None:
            return room
        if self.per_generation is None:
            return 1
        return max(1, min(room, int(self.seconds / max(self.per_generation, 1e-9))))

    def observe(self, generations: int, seconds: float) -> None:
        self.calls += 1
        if self.seconds is not None and self.calls > 1 and generations > 0:  # the first call compiled
            self.per_generation = seconds / generations


class Interrupts:
    """Whether Ctrl-C / SIGTERM arrived while deferred (``requested``)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None


@contextlib.contextmanager
def deferred_interrupts(enabled: bool = True) -> Iterator[Interrupts]:
    """Within the block, SIGINT/SIGTERM set ``requested`` instead of raising; a second one exits.

    Only in the main thread (signal handlers live there); elsewhere, and with ``enabled=False``,
    the block runs with the signal handling it had.
    """
    interrupts = Interrupts()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def handle(signum: int, frame) -> None:
        interrupts.requested, interrupts.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: stopping after the generations in flight and saving them "
              "(again to quit at once)", file=sys.stderr, flush=True)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    watcher = threading.Thread(target=_exit_on_second_signal, args=(read_fd,), daemon=True)
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher.start()
    try:
        yield interrupts
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write_fd)  # ends the watcher
        watcher.join(timeout=1.0)
        os.close(read_fd)


def _exit_on_second_signal(read_fd: int) -> None:
    """Counts the signals the C-level handler reports (even while Python is blocked); exits on the second."""
    seen = 0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:  # the write end closed: the block ended
            return
        seen += sum(1 for b in data if b in (signal.SIGINT, signal.SIGTERM))
        if seen >= 2:
            os.write(2, b"\nsecond interrupt: exiting now; the last saved generation is kept\n")
            os._exit(INTERRUPTED_EXIT)
