"""The eight design iterations: exact parameter counts, output contract, clear spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.models.convnet import ConvNet, count_parameters
from mnist_mlops.models.inference import InferenceModel

EXPECTED_PARAMS = {
    "lenet_v1": 440_812,
    "skeleton_v2": 194_884,
    "lighter_v3": 10_790,
    "bn_v4": 10_970,
    "dropout_v5": 10_970,
    "gap_v6": 6_070,
    "capacity_v7": 11_994,
    "gap_v8": 13_808,
}


def build_net(name: str) -> torch.nn.Module:
    return instantiate(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml").net)


def test_every_model_config_is_covered() -> None:
    variants = {
        p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml") if not p.stem.startswith("_")
    }
    assert variants == set(EXPECTED_PARAMS)


@pytest.mark.parametrize(("name", "expected"), EXPECTED_PARAMS.items())
def test_parameter_count_matches_the_report(name: str, expected: int) -> None:
    counts = count_parameters(build_net(name))
    assert counts == {"total": expected, "trainable": expected}


@pytest.mark.parametrize("name", EXPECTED_PARAMS)
def test_output_is_log_probabilities_per_image(name: str) -> None:
    net = build_net(name).eval()
    with torch.no_grad():
        out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(5))


def test_final_design_block_order_is_conv_relu_bn_dropout() -> None:
    layers = list(build_net("gap_v8").layers)
    kinds = [type(m).__name__ for m in layers[:4]]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Dropout"]
    assert all(not m.bias for m in layers if isinstance(m, torch.nn.Conv2d))
    assert layers[3].p == pytest.approx(0.1)


def test_inference_model_normalises_unit_images() -> None:
    net = build_net("gap_v8").eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(InferenceModel(net)(images), net((images - 0.1307) / 0.3081))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"conv": 10, "k": 3}, {"pool": 2}], "exactly one of"),
        ([{"conv": 10, "k": 3, "ops": ["gelu"]}], "unknown op 'gelu'"),
        ([{"conv": -4, "k": 3}], "positive integer"),
        ([{"conv": 10, "k": 3, "stride": 2}], "unknown keys ['stride']"),
        ([{"conv": 10, "k": 3}], "must end in 10 values"),
        ([{"conv": 10, "k": 29}], "do not fit a 28x28 input"),
    ],
)
def test_bad_layer_spec_fails_with_a_clear_message(layers: list, message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        ConvNet(layers)
    assert message in str(err.value)


def test_dropout_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="dropout must be in"):
        ConvNet([{"conv": 10, "k": 28}], dropout=1.5)
