"""benchmarks/alternate.py: peers in long-lived processes, timed in alternated bursts.

Fake peers (a few lines of Python serving a runner) check what the benchmark table relies
on: every round gets its share of a fast peer's calls, a peer that fails part-way is left
out rather than compared on fewer rounds, and no child outlives the row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import alternate
from benchmarks.alternate import MIN_CALLS, PeerProcess

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.alternate import serve
calls = [0]
def run():
    calls[0] += 1
    if {crash_after} and calls[0] > {crash_after}:
        raise SystemExit(3)
    time.sleep({sleep})
print("a library's chatter", end="")  # no newline: the protocol must still find its lines
serve(lambda: (run, {{"note": "fake"}}))
"""


def _peer(name: str, sleep: float = 0.0, crash_after: int = 0) -> PeerProcess:
    code = CHILD.format(root=str(ROOT), sleep=sleep, crash_after=crash_after)
    return PeerProcess(name, [sys.executable, "-c", code], {})


def test_bursts_spread_the_calls_and_drop_a_peer_that_failed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(alternate, "MAX_CALLS", 60)
    fast, slow = _peer("fast"), _peer("slow", sleep=0.002)
    crashing = _peer("crashing", crash_after=30)  # 3 warm-up calls, then bursts of 20 + 2
    results = alternate.alternate([fast, slow, crashing], rounds=4, seconds=0.4, threads=1)
    assert set(results) == {"fast", "slow"}
    assert "[crashing] failed (exit code 3)" in capsys.readouterr().err
    fast_result = results["fast"]
    # 60 calls over 4 rounds: 15 per burst, not 60 in the first and 3 in the others.
    assert fast_result["calls"] == 60 and len(fast_result["rounds"]) == 4
    assert fast_result["note"] == "fake"
    slow_result = results["slow"]
    assert len(slow_result["rounds"]) == 4
    assert slow_result["calls"] >= 4 * MIN_CALLS
    assert slow_result["min"] >= 0.002 and slow_result["median"] >= slow_result["min"]
    for peer in (fast, slow, crashing):
        assert peer._proc is None  # stopped: no child outlives the row


def test_a_child_that_fails_during_setup_is_reported() -> None:
    broken = PeerProcess("broken", [sys.executable, "-c", "raise SystemExit(5)"], {})
    assert alternate.alternate([broken], rounds=2, seconds=0.1, threads=1) == {}
