"""One configurable network class for every design iteration.

Each iteration is a list of layer specs in ``conf/model/<name>.yaml``; this module only knows
how to turn a spec into layers, so a ninth variant is a new YAML file and no new code. A spec
is a mapping with exactly one *kind* key and optional modifiers::

    {conv: 16, k: 3, pad: 0, ops: [relu, bn, dropout]}  # Conv2d(in,16,3) -> ReLU -> BN -> Dropout
    {maxpool: 2}                                        # MaxPool2d(2)
    {avgpool: 6}                                        # AvgPool2d(6) (global average pooling)
    {flatten: true}                                     # width computed from the layers above
    {linear: 512, ops: [relu]}

``ops`` run in the order given (that order is part of each iteration's specification).
``bias`` defaults to the network-wide ``bias``; ``dropout`` ops use the network-wide ``dropout``
probability so sweeps can tune one number. The output is flattened to (N, 10) log-probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES

LAYER_KINDS = ("conv", "maxpool", "avgpool", "flatten", "linear")
OPS = ("relu", "bn", "dropout")
_MODIFIERS = {"conv": {"k", "pad", "ops", "bias"}, "linear": {"ops", "bias"}}


class ConvNet(nn.Module):
    """A plain feed-forward stack built from layer specs; ``forward`` returns log-probabilities."""

    def __init__(
        self,
        layers: Sequence[Mapping[str, Any]],
        dropout: float = 0.0,
        bias: bool = False,
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.num_classes = num_classes
        modules: list[nn.Module] = []
        channels = in_channels
        for index, spec in enumerate(layers):
            if "flatten" in spec:  # the next linear layer's input is the flattened feature map
                channels = _feature_size(modules, in_channels)
            built, channels = _build_layer(index, dict(spec), channels, self.dropout, bias)
            modules.extend(built)
        self.layers = nn.Sequential(*modules)
        self._check_output_shape(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(x).flatten(1), dim=1)

    def _check_output_shape(self, in_channels: int) -> None:
        """Fail at construction, naming the shape, when the specs do not end in ``num_classes``."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self.layers(torch.zeros(1, in_channels, IMAGE_SIDE, IMAGE_SIDE))
        except RuntimeError as err:
            raise ValueError(f"layer specs do not fit a 28x28 input: {err}") from err
        finally:
            self.train(was_training)
        if out.flatten(1).shape[1] != self.num_classes:
            raise ValueError(
                f"network output has shape {tuple(out.shape[1:])} per image; the layer specs must "
                f"end in {self.num_classes} values (e.g. 10x1x1)"
            )


def _build_layer(
    index: int, spec: dict[str, Any], channels: int, dropout: float, default_bias: bool
) -> tuple[list[nn.Module], int]:
    kinds = [k for k in spec if k in LAYER_KINDS]
    if len(kinds) != 1:
        raise ValueError(
            f"layer {index} ({spec}) must have exactly one of {LAYER_KINDS}, got {kinds or 'none'}"
        )
    kind = kinds[0]
    unknown = set(spec) - {kind} - _MODIFIERS.get(kind, set())
    if unknown:
        raise ValueError(f"layer {index} ({kind}): unknown keys {sorted(unknown)}")
    value = spec[kind]
    bias = bool(spec.get("bias", default_bias))
    if kind == "conv":
        out = _positive_int(index, kind, value)
        layer: nn.Module = nn.Conv2d(
            channels,
            out,
            kernel_size=int(spec.get("k", 3)),
            padding=int(spec.get("pad", 0)),
            bias=bias,
        )
    elif kind == "linear":
        out = _positive_int(index, kind, value)
        layer = nn.Linear(channels, out, bias=bias)
    elif kind == "maxpool":
        return [nn.MaxPool2d(_positive_int(index, kind, value))], channels
    elif kind == "avgpool":
        return [nn.AvgPool2d(_positive_int(index, kind, value))], channels
    else:
        return [nn.Flatten(1)], channels
    modules = [layer]
    for op in spec.get("ops", []):
        modules.append(_build_op(index, op, out, dropout))
    return modules, out


def _feature_size(modules: list[nn.Module], in_channels: int) -> int:
    """Values per image after ``modules`` on a 28x28 input (the width a flatten produces)."""
    with torch.no_grad():
        out = nn.Sequential(*modules).eval()(torch.zeros(1, in_channels, IMAGE_SIDE, IMAGE_SIDE))
    return int(out.flatten(1).shape[1])


def _build_op(index: int, op: str, channels: int, dropout: float) -> nn.Module:
    if op == "relu":
        return nn.ReLU()
    if op == "bn":
        return nn.BatchNorm2d(channels)
    if op == "dropout":
        return nn.Dropout(dropout)
    raise ValueError(f"layer {index}: unknown op {op!r}; choose from {OPS}")


def _positive_int(index: int, kind: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"layer {index} ({kind}): expected a positive integer, got {value!r}")
    return value


def count_parameters(net: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (BatchNorm running stats are buffers, not counted)."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
