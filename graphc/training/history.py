"""`History`: what `Model.fit` returns -- per-epoch values and timing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch logs: ``history["loss"]``, ``history["val_accuracy"]`` (lists aligned with
    `epochs`), plus timing of the training steps.

    `train_seconds` and `steps` cover only the training step loop (batch assembly and the
    native calls), not compilation (`compile_seconds`) or validation.
    """

    epochs: list[int] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    # fit(distributed=True): seconds this rank's steps waited on gradient allreduces
    allreduce_wait_seconds: float = 0.0

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record one epoch; a key first seen late is padded with NaN for earlier epochs."""
        for key, value in logs.items():
            column = self.history.setdefault(key, [float("nan")] * len(self.epochs))
            column.append(float(value))
        self.epochs.append(epoch)
        for column in self.history.values():
            if len(column) < len(self.epochs):
                column.append(float("nan"))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def keys(self) -> list[str]:
        return list(self.history)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def allreduce_wait_per_step(self) -> float:
        """Mean seconds a step waited on its gradient allreduces (0 alone)."""
        return self.allreduce_wait_seconds / self.steps if self.steps else 0.0

    def last(self) -> dict[str, float]:
        """The final epoch's values."""
        return {k: v[-1] for k, v in self.history.items() if v}
