"""Training: `Model` (fit/evaluate/predict, save/load/export), `History`, the progress bar."""

from graphc.training.history import History
from graphc.training.model import Model
from graphc.training.progress import ProgressBar

__all__ = ["History", "Model", "ProgressBar"]
