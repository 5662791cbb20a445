"""Training objectives, chosen by the ``model/loss`` config group.

They take the network's log-probabilities, the labels and the input batch (a teacher needs the
images), so the module's ``training_step`` is the same for every objective. Validation and test
always report plain NLL, so ``val/loss`` stays comparable across objectives.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ClassificationLoss(nn.Module):
    """Negative log-likelihood of the labels, optionally against label-smoothed targets."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(
                f"model.loss.label_smoothing must be in [0, 1), got {label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, log_probs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        log_probs = log_probs.float()
        if self.label_smoothing == 0.0:
            return F.nll_loss(log_probs, targets)
        # log_probs are already normalised, so cross-entropy's log-softmax leaves them as they are
        return F.cross_entropy(log_probs, targets, label_smoothing=self.label_smoothing)


class DistillationLoss(ClassificationLoss):
    """Hinton et al.'s knowledge distillation from a larger, already trained network.

    ``(1 - weight) * NLL(labels) + weight * T^2 * KL(teacher_T || student_T)`` where ``_T`` are
    the softmaxes at temperature ``T``. The teacher sees the same (augmented) batch as the
    student, so it also labels the augmented images the dataset has no labels for. It is frozen
    and always in eval mode (its BatchNorm statistics never move).
    """

    def __init__(
        self,
        teacher: nn.Module,
        weight: float = 0.5,
        temperature: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(label_smoothing)
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"model.loss.weight must be in [0, 1], got {weight!r}")
        if float(temperature) <= 0.0:
            raise ValueError(f"model.loss.temperature must be > 0, got {temperature!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = float(weight)
        self.temperature = float(temperature)

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self, log_probs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        hard = super().forward(log_probs, targets, inputs)
        with torch.no_grad():
            teacher_scores = self.teacher(inputs).float()
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(log_probs.float() / t, dim=1),
            F.log_softmax(teacher_scores / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1.0 - self.weight) * hard + self.weight * t * t * soft
