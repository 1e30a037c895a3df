"""The per-epoch progress display of `Model.fit`.

verbose=1 on a terminal: a bar redrawn in place (at most every `interval` seconds and at
the end) showing steps done, samples/s, the running loss and metrics, and the ETA. On a
stream that is not a terminal, or with verbose=2, only one summary line per epoch is
written, and verbose=0 writes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TextIO

__all__ = ["ProgressBar", "format_logs"]


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def _number(v: float) -> str:
    return f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3e}"


def format_logs(logs: Mapping[str, float]) -> str:
    """``name: value - ...`` (small values in scientific notation, non-finite ones left out)."""
    return " - ".join(f"{k}: {_number(float(v))}" for k, v in logs.items()
                      if isinstance(v, (int, float)) and math.isfinite(v))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    if seconds >= 10:
        return f"{seconds:.0f}s"
    return f"{seconds:.1f}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"


class ProgressBar:
    """One epoch's display; see the module docstring for when it draws what."""

    def __init__(self, epoch: int, epochs: int, steps: int, stream: TextIO, verbose: int,
                 width: int = 24, interval: float = 0.1):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.stream = stream
        self.verbose = verbose
        self.live = verbose == 1 and _is_tty(stream)
        self.width = width
        self.interval = interval
        self.start = time.perf_counter()
        self._last_draw = -math.inf
        self._drawn = False

    def update(self, step: int, samples: int, running: Callable[[], Mapping[str, float]]
               ) -> None:
        """After `step` steps and `samples` examples; `running()` gives the running values
        (called only when the bar redraws, since it may cost a pass over the predictions)."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.interval and step < self.steps:
            return
        self._last_draw = now
        elapsed = max(now - self.start, 1e-9)
        done = int(self.width * step / self.steps)
        arrow = ">" if done < self.width else ""
        bar = "=" * max(done - len(arrow), 0) + arrow + "." * (self.width - done)
        eta = elapsed / step * (self.steps - step) if step else math.inf
        n = len(str(self.steps))
        line = (f"\r{step:>{n}}/{self.steps} [{bar}] {samples / elapsed:,.0f} samples/s"
                f" - ETA {_duration(eta) if math.isfinite(eta) else '?'}")
        values = format_logs(running())
        if values:
            line += f" - {values}"
        self.stream.write(line + "\x1b[K")  # clear to the end of the line
        self.stream.flush()
        self._drawn = True

    def begin(self) -> None:
        if self.verbose and self.live:
            self.stream.write(f"Epoch {self.epoch + 1}/{self.epochs}\n")
            self.stream.flush()

    def finish(self, logs: Mapping[str, float], samples: int) -> None:
        """Write the epoch's final line (every verbose > 0 mode)."""
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self.start
        rate = samples / max(elapsed, 1e-9)
        summary = (f"{self.steps}/{self.steps} - {_duration(elapsed)} - {rate:,.0f} samples/s"
                   f" - {format_logs(logs)}")
        if self.live:
            self.stream.write("\r" + summary + "\x1b[K\n")
        else:
            self.stream.write(f"Epoch {self.epoch + 1}/{self.epochs} - {summary}\n")
        self.stream.flush()
