"""The per-phase deadlines of l2ljax.run.watchdog, without MPI: when they fire, what they say, the limits."""

import io
import math
import threading
import time

import pytest

from l2ljax.run.watchdog import FLOOR_SECONDS, SCALE, Watchdog, seconds_setting, watching


def dog(timeout=None, **kwargs):
    """A watchdog whose abort records the call and whose exit only sets an event."""
    done, stream = threading.Event(), io.StringIO()
    calls = []
    watchdog = Watchdog(1, 2, lambda: calls.append("abort"), timeout, stream=stream,
                        exit=lambda status: (calls.append(status), done.set()), **kwargs)
    return watchdog, done, stream, calls


def test_a_phase_past_its_deadline_prints_one_line_and_aborts():
    watchdog, done, stream, calls = dog(0.2)
    with watchdog.phase("record", "the callbacks"):
        assert done.wait(5)
    assert calls == ["abort", 1]
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.startswith("l2ljax: rank 1 of 2 is hung: the callbacks has not returned")
    assert "L2LJAX_RANK_TIMEOUT" in line


def test_phases_that_end_in_time_never_fire():
    watchdog, done, _, calls = dog(0.3)
    for _ in range(5):
        with watchdog.phase("chunk", "a chunk"):
            time.sleep(0.1)
    assert not done.wait(0.6) and calls == []


def test_waiting_for_other_ranks_gets_a_grace_and_says_another_rank_is_stuck():
    watchdog, done, stream, _ = dog(0.2, grace=0.3)
    started = time.monotonic()
    with watchdog.phase("exchange", "the exchange of errors", waits=True):
        assert done.wait(5)
    assert time.monotonic() - started >= 0.5
    assert "waited" in stream.getvalue() and "hung or dead" in stream.getvalue()


def test_the_innermost_overdue_phase_is_named():
    watchdog, done, stream, _ = dog(0.2)
    with watchdog.phase("chunk", "the chunk"), watchdog.phase("simulator", "the host simulator"):
        assert done.wait(5)
    assert "the host simulator has not returned" in stream.getvalue()


def test_default_limits_scale_with_the_phase_and_setup_gets_an_hour(monkeypatch):
    monkeypatch.delenv("L2LJAX_RANK_TIMEOUT", raising=False)
    monkeypatch.delenv("L2LJAX_SETUP_TIMEOUT", raising=False)
    watchdog = Watchdog(0, 2, lambda: None)
    assert watchdog.limit("chunk") == FLOOR_SECONDS
    watchdog.longest["chunk"] = 100.0
    assert watchdog.limit("chunk") == SCALE * 100.0
    assert watchdog.limit("chunk", setup=True) == 3600.0
    assert watchdog.limit("exchange", waits=True) == FLOOR_SECONDS * 1.1


def test_the_environment_sets_the_timeout_and_inf_turns_it_off(monkeypatch):
    monkeypatch.setenv("L2LJAX_RANK_TIMEOUT", "7.5")
    assert Watchdog(0, 2, lambda: None).limit("chunk") == 7.5
    assert Watchdog(0, 2, lambda: None, timeout=3).limit("chunk") == 3  # the argument wins
    off = Watchdog(0, 2, lambda: None, timeout=math.inf)
    assert not off.enabled
    with off.phase("chunk", "a chunk"):
        pass
    assert off._thread is None


@pytest.mark.parametrize("value", ["-1", "0", "soon", "nan"])
def test_bad_timeouts_are_refused_naming_the_setting(monkeypatch, value):
    monkeypatch.setenv("L2LJAX_RANK_TIMEOUT", value)
    with pytest.raises(ValueError, match="L2LJAX_RANK_TIMEOUT"):
        seconds_setting(None, "L2LJAX_RANK_TIMEOUT", None)


def test_schemes_without_a_watchdog_are_not_watched():
    with watching(object())("chunk", "a chunk", setup=True):
        pass
