"""Figures and tables every run logs; shared by the MLflow logger and the DVC evaluate stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def per_class_accuracy(confusion: np.ndarray) -> dict[str, float]:
    """Recall per digit from a confusion matrix indexed [true, predicted]."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros_like(support), where=support > 0)
    return {str(digit): float(value) for digit, value in enumerate(recall)}


def plot_learning_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch for train and val, side by side."""
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            values = [h.get(f"{split}/{metric}", np.nan) for h in history]
            ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(confusion: np.ndarray, path: Path, title: str = "test") -> Path:
    """Counts per (true, predicted) digit, annotated."""
    confusion = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(np.log1p(confusion), cmap="Blues")
    for (row, col), count in np.ndenumerate(confusion):
        if count:
            ax.text(
                col,
                row,
                str(int(count)),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if row == col else "black",
            )
    ax.set_xticks(range(confusion.shape[1]))
    ax.set_yticks(range(confusion.shape[0]))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
