"""Trainer callbacks: the base class and the console progress ones (``conf/callbacks/``).

The Optuna pruning callback lives in :mod:`.pruning` and is not imported here, so training
without a sweep never imports Optuna.
"""

from mnist_mlops.training.callbacks.base import Callback, TrainingInterrupted
from mnist_mlops.training.callbacks.progress import ConsoleProgress, ProgressBar, format_duration

__all__ = ["Callback", "ConsoleProgress", "ProgressBar", "TrainingInterrupted", "format_duration"]
