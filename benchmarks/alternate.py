"""Peers timed in alternation: one long-lived process per peer, bursts of calls in turn.

A host whose speed drifts by 20-30 % from one minute to the next (the shared VMs these
benchmarks run on) makes two peers timed one after the other differ by the drift, not by
their code. So every peer of a row gets its own process, pinned to the same cores, which
sets up and warms up once and then waits; the parent asks each in turn for a burst of calls,
`rounds` times, rotating the order, and pools every peer's calls. A slow spell then lands
on every peer about alike, and a ratio of medians is a ratio of code.

Between two bursts the parent waits `GAP_S` (at more than one thread), so that the previous
peer's spinning threads (graphc's pool, OpenMP and OpenBLAS workers) have gone to sleep and
do not take the cores of the next; each burst starts with `WARM_S` of untimed calls (at
least `WARM_CALLS`), which wake them again: on this VM the calls after a core slept run up
to 2x slower for a few milliseconds (a halted vCPU wakes slowly; a 0.46 ms GEMM at 2 threads
took 1.08, then 0.74 ms, and settled by its 12th call), which a burst of fifty 80 us calls
would otherwise count. Many short bursts beat a few long ones: this
host's slow spells (calls 25 % slower for a few tenths of a second, for every peer alike)
then fall on each peer in about the same share.

Protocol (one JSON object per line, after the "@@ " prefix, on the child's stdout; anything
else a library prints there is ignored): the child prints its setup record once ready, then
answers each request line ("SECONDS MAX_CALLS": time calls until SECONDS have passed, at
least MIN_CALLS and at most MAX_CALLS of them) with {"times": [...]}, and exits on "quit" or
end of input. Each burst may take `MAX_CALLS / rounds` calls, so a fast peer's calls are
spread over all rounds as a slow one's are.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PREFIX = "@@ "
GAP_S = 0.2  # idle time before each burst at > 1 thread: the peers' spin-then-sleep windows
GAP_ONE_THREAD_S = 0.02  # ... at 1 thread (no worker threads to wait for)
WARM_CALLS = 2  # untimed calls at the start of each burst, at least ...
WARM_S = 0.01  # ... and for this long
MIN_CALLS = 3  # timed calls per burst, however long a call takes
MAX_CALLS = 500  # timed calls per peer and row, over all bursts (a share of it per burst)
SETUP_TIMEOUT_S = 900.0
BURST_TIMEOUT_S = 600.0


def serve(setup: Callable[[], tuple[Callable[[], object], dict]]) -> None:
    """The child's side: set up (`setup()` returns the runner and its info record), warm up,
    then time a burst of calls for each request read from stdin."""
    run, info = setup()
    for _ in range(3):
        run()
    _send(info)
    for line in sys.stdin:
        line = line.strip()
        if line == "quit":
            break
        seconds, max_calls = (float(v) for v in line.split())
        warm_start = time.perf_counter()
        warm = 0
        while warm < WARM_CALLS or time.perf_counter() - warm_start < WARM_S:
            run()
            warm += 1
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < MIN_CALLS or (time.perf_counter() - start < seconds
                                         and len(times) < max_calls):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        _send({"times": times})


def _send(record: dict[str, Any]) -> None:
    # The leading newline ends whatever a library left unterminated on stdout.
    sys.stdout.write("\n" + PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()


@dataclass
class PeerProcess:
    """The parent's handle on one peer's child (`command` starts it in serve mode)."""

    name: str
    command: list[str]
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # the median of each burst
    _proc: subprocess.Popen[str] | None = None
    _lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    _stderr: IO[str] | None = None

    def start(self) -> bool:
        """Start the child and wait until it is set up; False (reported) when it failed."""
        self._stderr = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True).start()
        record = self._receive(SETUP_TIMEOUT_S)
        if record is None:
            return False
        self.info = record
        return True

    def burst(self, seconds: float, max_calls: int) -> bool:
        """One timed burst of at most `max_calls` calls; False (reported, child stopped)
        when the child failed."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(f"{seconds} {max(max_calls, MIN_CALLS)}\n")
            self._proc.stdin.flush()
        except OSError:
            self._failed()
            return False
        record = self._receive(BURST_TIMEOUT_S)
        if record is None:
            return False
        times = [float(t) for t in record["times"]]
        self.times += times
        self.rounds.append(statistics.median(times))
        return True

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.close()
            self._proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        self._proc = None

    def result(self) -> dict[str, Any]:
        return {"median": statistics.median(self.times), "min": min(self.times),
                "max": max(self.times), "calls": len(self.times), "rounds": self.rounds,
                **self.info}

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                if line.startswith(PREFIX):
                    try:
                        self._lines.put(json.loads(line[len(PREFIX):]))
                    except json.JSONDecodeError:
                        continue  # not ours: something else printed the prefix
        finally:
            self._lines.put(None)  # end of output: the child exited

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        try:
            record = self._lines.get(timeout=timeout)
        except queue.Empty:
            record = None
        if record is None:
            self._failed()
        return record

    def _failed(self) -> None:
        """Stop the child and report the end of what it wrote to stderr."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        code = self._proc.wait()
        err = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            err = self._stderr.read()[-2000:]
        sys.stderr.write(f"[{self.name}] failed (exit code {code}):\n{err}\n")
        self.stop()


def alternate(peers: list[PeerProcess], rounds: int, seconds: float,
              threads: int) -> dict[str, dict[str, Any]]:
    """Start every peer (one at a time, so setups do not overlap), then `rounds` bursts of
    `seconds / rounds` and at most MAX_CALLS / rounds calls each, in an order rotated every
    round; the pooled results of the peers that answered every burst (a peer that failed
    part-way is reported on stderr and left out, rather than compared on fewer rounds)."""
    gap = GAP_S if threads > 1 else GAP_ONE_THREAD_S
    per_burst = max(MIN_CALLS, math.ceil(MAX_CALLS / rounds))
    live = [p for p in peers if p.start()]
    try:
        for r in range(rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for peer in order:
                if peer._proc is None:
                    continue
                time.sleep(gap)
                peer.burst(seconds / rounds, per_burst)
    finally:
        for peer in live:
            peer.stop()
    return {p.name: p.result() for p in live if len(p.rounds) == rounds}


def child_command(script: Path, args: list[str], threads: int) -> list[str]:
    """`script args` run by this interpreter, pinned to the first `threads` cores when the
    host has more (whatever a library does with its thread flags)."""
    cmd = [sys.executable, str(script), *args]
    taskset = shutil.which("taskset")
    if taskset and threads < (os.cpu_count() or 1):
        cmd = [taskset, "-c", ",".join(str(c) for c in range(threads)), *cmd]
    return cmd
