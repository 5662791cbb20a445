"""Precise BatchNorm: population statistics of the final weights on clean training images.

During training BatchNorm keeps an exponential average of *augmented* mini-batch statistics,
taken while the weights were still moving. The served model sees clean digits, so after the
best weights are restored we recompute every BN layer's mean/variance exactly, over the whole
training split without augmentation (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021;
``torch.optim.swa_utils.update_bn`` does the same but also runs dropout in training mode).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def recalibrate_batchnorm(
    net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> int:
    """Replace BN running statistics by their average over ``batches``; returns images seen.

    Only the BN layers run in training mode (dropout stays off), and each batch counts equally
    (``momentum=None`` is a cumulative average), as at evaluation time.
    """
    norms = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return 0
    was_training = net.training
    momenta = {m: m.momentum for m in norms}
    net.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    images = 0
    try:
        for x, _ in batches:
            net(x.to(device))
            images += int(x.shape[0])
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        net.train(was_training)
    return images
