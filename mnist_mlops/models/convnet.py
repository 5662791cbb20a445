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

The inference contract is declared, not discovered: the *head* is the last spec that has
weights (``conv`` or ``linear``) together with the parameter-free specs after it (pooling,
flatten); everything before it is the *body*. ``features(x)`` is the body's output flattened
to (N, D) (the penultimate representation drift monitoring compares), ``classify(features)``
runs the head on it, and ``forward(x) == classify(features(x))``. This holds for a GAP
network that ends in a 1x1 conv (gap_v8: D = 16) exactly as for one with a Linear classifier
(lenet_v1: D = 512).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES

LAYER_KINDS = ("conv", "maxpool", "avgpool", "flatten", "linear")
WEIGHTED_KINDS = ("conv", "linear")
OPS = ("relu", "bn", "dropout")
_MODIFIERS = {"conv": {"k", "pad", "ops", "bias"}, "linear": {"ops", "bias"}}


class ConvNet(nn.Module):
    """A plain feed-forward stack built from layer specs; ``forward`` returns log-probabilities.

    ``layers`` holds every module in spec order (so state-dict keys stay ``layers.<i>.*``);
    ``head_start`` is the index in ``layers`` where the head begins and ``feature_shape`` the
    per-image shape of the body's output (see the module docstring).
    """

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
        self.in_channels = in_channels
        modules: list[nn.Module] = []
        channels = in_channels
        head_start: int | None = None
        for index, spec in enumerate(layers):
            if "flatten" in spec:  # the next linear layer's input is the flattened feature map
                channels = _feature_size(modules, in_channels)
            built, channels = _build_layer(index, dict(spec), channels, self.dropout, bias)
            if any(kind in spec for kind in WEIGHTED_KINDS):
                head_start = len(modules)
            modules.extend(built)
        if head_start is None:
            raise ValueError(
                "layer specs have no conv or linear layer, so there is no classifier head: "
                f"got {[dict(spec) for spec in layers]}"
            )
        self.layers = nn.Sequential(*modules)
        self.head_start: int = head_start
        self._check_output_shape(in_channels)
        self.feature_shape: tuple[int, ...] = self._body_output_shape()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_probs(self._run(x, 0, self._head_index()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (N, D): the head's input, flattened."""
        return self._run(x, 0, self._head_index()).flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, 10) from ``features(x)``: the head alone."""
        return self._log_probs(features.reshape(-1, *self._feature_shape()))

    @property
    def feature_dim(self) -> int:
        """D, the width of ``features``."""
        return math.prod(self._feature_shape())

    def _log_probs(self, body_out: torch.Tensor) -> torch.Tensor:
        head = self._run(body_out, self._head_index(), len(self.layers))
        return F.log_softmax(head.flatten(1), dim=1)

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in itertools.islice(self.layers, start, stop):  # no Sequential per call
            x = layer(x)
        return x

    def _head_index(self) -> int:
        # Networks pickled before the contract existed carry no ``head_start``; their split is
        # recovered once from the weights: the head begins at the last module holding a weight
        # matrix or kernel (conv/linear; BatchNorm's weights are vectors).
        start = self.__dict__.get("head_start")
        if start is None:
            weighted = [
                i
                for i, layer in enumerate(self.layers)
                if getattr(layer, "weight", None) is not None and layer.weight.dim() >= 2
            ]
            if not weighted:
                raise ValueError("this ConvNet has no conv or linear layer to act as its head")
            start = self.head_start = weighted[-1]
        return start

    def _feature_shape(self) -> tuple[int, ...]:
        shape = self.__dict__.get("feature_shape")
        if shape is None:  # pickled before the contract existed
            shape = self.feature_shape = self._body_output_shape()
        return shape

    def _body_output_shape(self) -> tuple[int, ...]:
        was_training = self.training
        param = next(self.parameters())
        side = IMAGE_SIDE
        channels = self.__dict__.get("in_channels", 1)
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, channels, side, side, dtype=param.dtype, device=param.device)
                out = self._run(x, 0, self._head_index())
        finally:
            self.train(was_training)
        return tuple(int(d) for d in out.shape[1:])

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
