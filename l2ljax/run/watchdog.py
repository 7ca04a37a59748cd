"""Deadlines on the blocking phases of a parallel run: a rank that hangs or dies ends the whole job.

Under MPI every phase of the run loop ends in a collective (the compiled chunk gathers the
population's scores; ``settle``, ``agree`` and ``raise_together`` exchange errors and stops), so
one rank that hangs (a callback or host simulator that never returns, a stuck file system) or
dies without its launcher ending the job leaves the others waiting forever. Each rank therefore
arms a deadline when it enters a phase and disarms it when it leaves; a daemon thread watches
the deadlines. When one passes, that rank prints one line to stderr (which rank, which phase,
how long, what to do) and calls ``abort`` (``MPI_Abort``, which ends every rank under any
launcher).

Limits: ``timeout`` seconds per phase when set (``MPI(timeout=...)`` or ``L2LJAX_RANK_TIMEOUT``;
``inf`` turns the watchdog off); by default ``max(600 s, 10 × the longest the same phase took so
far)``: a slow generation of a big model is not a hang, but a hang still ends within 10 minutes
of a fast run's phase. A phase that compiles (the first chunk of each ``run``) or waits for the
ranks to arrive (the check before a run starts, where each rank loads its data) gets at least
``L2LJAX_SETUP_TIMEOUT`` (default 1 hour): from outside, compilation cannot be told from a hang.
Phases that only wait for other ranks get ``grace`` seconds more than a rank's own work, so that
the rank that hangs names itself before the ranks waiting for it report.

A rank stuck in C code that holds Python's GIL cannot run the watchdog thread; the ranks waiting
for it still report it (as hung or dead), and their abort ends it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

TIMEOUT_VARIABLE = "L2LJAX_RANK_TIMEOUT"
SETUP_VARIABLE = "L2LJAX_SETUP_TIMEOUT"
FLOOR_SECONDS = 600.0
SCALE = 10.0
SETUP_SECONDS = 3600.0


def seconds_setting(value: float | str | None, variable: str, default: float | None) -> float | None:
    """``value``, else the environment's ``variable``, else ``default``; a positive number of
    seconds (``inf``: never)."""
    source = "timeout"
    if value is None:
        value, source = os.environ.get(variable), variable
    if value is None or value == "":
        return default
    source = f"{source}={value!r}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected a number of seconds (inf: no limit)") from None
    if not seconds > 0:  # also refuses NaN
        raise ValueError(f"{source}: expected a positive number of seconds (inf: no limit)")
    return seconds


@dataclasses.dataclass(eq=False)  # removed by identity: two phases may hold equal fields
class _Phase:
    key: str
    description: str
    started: float
    limit: float
    waits: bool


class Watchdog:
    """Deadlines per phase for one rank; ``phase`` arms one around a block.

    rank, n_ranks: named in the message.
    abort:   called once a deadline passed (``comm.Abort(1)``); if it returns, the process exits.
    timeout: seconds per phase (None: ``L2LJAX_RANK_TIMEOUT``, else the adaptive default above).
    grace:   extra seconds for phases that wait for other ranks (default: 2 s or 10 % of the limit).
    """

    def __init__(self, rank: int, n_ranks: int, abort: Callable[[], Any], timeout: float | str | None = None, *,
                 grace: float | None = None, stream: Any = None, clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], Any] = os._exit):
        self.rank, self.n_ranks, self.abort, self.exit = rank, n_ranks, abort, exit
        self.timeout = seconds_setting(timeout, TIMEOUT_VARIABLE, None)
        self.setup = seconds_setting(None, SETUP_VARIABLE, SETUP_SECONDS)
        self.grace, self.stream, self.clock = grace, stream, clock
        self.longest: dict[str, float] = {}
        self.fired: str | None = None  # the message, once a deadline passed
        self._armed: list[_Phase] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.timeout is None or math.isfinite(self.timeout)

    def limit(self, key: str, *, waits: bool = False, setup: bool = False) -> float:
        """Seconds allowed for phase ``key`` now (see the module docstring)."""
        seconds = self.timeout if self.timeout is not None else max(FLOOR_SECONDS, SCALE * self.longest.get(key, 0.0))
        if setup:
            seconds = max(seconds, self.setup)
        if waits:
            seconds += self.grace if self.grace is not None else max(2.0, 0.1 * seconds)
        return seconds

    @contextlib.contextmanager
    def phase(self, key: str, description: str, *, waits: bool = False, setup: bool = False) -> Iterator[None]:
        """Arm a deadline for the block: ``key`` names the phase for the adaptive limit,
        ``description`` for the message; ``waits``: it only waits for other ranks; ``setup``: it
        may compile or wait for ranks still loading (the setup limit applies)."""
        if not self.enabled:
            yield
            return
        armed = _Phase(key, description, self.clock(), self.limit(key, waits=waits, setup=setup), waits)
        with self._changed:
            self._armed.append(armed)
            self._start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._armed.remove(armed)
                self.longest[key] = max(self.longest.get(key, 0.0), self.clock() - armed.started)
                self._changed.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="l2ljax-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._changed:
            while True:
                now = self.clock()
                overdue = [p for p in self._armed if now - p.started >= p.limit]
                if overdue:
                    break
                waits = [p.started + p.limit - now for p in self._armed]
                self._changed.wait(min(waits) if waits else None)
            stuck = self._armed[-1]  # the innermost phase is what blocks the outer ones
            self.fired = self.message(stuck, now - stuck.started)
        stream = self.stream or sys.stderr
        stream.write(self.fired + "\n")
        stream.flush()
        try:
            self.abort()
        finally:
            self.exit(1)  # an abort that returned (or failed) must still end this rank

    def message(self, phase: _Phase, elapsed: float) -> str:
        who = f"l2ljax: rank {self.rank} of {self.n_ranks}"
        fix = (f"If it is only slow, raise the limit: parallel.MPI(timeout=SECONDS) or {TIMEOUT_VARIABLE}=SECONDS "
               f"(now {phase.limit:.0f} s).")
        if phase.waits:
            return (f"{who} waited {elapsed:.0f} s for the other ranks in {phase.description}: one of them is hung "
                    f"or dead (its own message, if it could print one, names it); aborting the job. {fix}")
        return (f"{who} is hung: {phase.description} has not returned after {elapsed:.0f} s; aborting the job. "
                f"{fix}")


def watching(parallel: Any) -> Callable[..., contextlib.AbstractContextManager]:
    """The ``phase`` of ``parallel``'s watchdog, or a no-op for schemes without one."""
    watchdog = getattr(parallel, "watchdog", None)
    return watchdog.phase if watchdog is not None else _unwatched


@contextlib.contextmanager
def _unwatched(key: str, description: str, **_: bool) -> Iterator[None]:
    yield
