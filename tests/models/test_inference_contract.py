"""The declared inference contract (features / classify / embed / predict_proba) on every
design: the eight ``conf/model/*.yaml`` plus a test-only ninth with no Linear layer at all.

What must hold for each: ``classify(features(x))`` is ``forward(x)`` exactly, the embedding
has the width the specs imply (the head's input, flattened), probabilities sum to 1, and the
same holds after the model went through MLflow (logged in a real sqlite store, loaded back)
and after unpickling a network pickled before the contract existed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.models.convnet import ConvNet
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.monitoring.model_probe import ModelProbe, load_registered_model
from mnist_mlops.tracking.mlflow_logger import log_inference_model

SPECS = Path(__file__).parent / "specs"
# the head's input per design, worked out by hand from the YAML comments (C x H x W)
EXPECTED_FEATURE_DIM = {
    "lenet_v1": 512,  # linear 512 -> linear 10
    "skeleton_v2": 10 * 7 * 7,  # conv 10 k7 on 10x7x7
    "lighter_v3": 10 * 7 * 7,
    "bn_v4": 10 * 7 * 7,
    "dropout_v5": 10 * 7 * 7,
    "gap_v6": 20 * 7 * 7,  # conv 10 k1 (+bn, relu) then avgpool 7
    "capacity_v7": 32 * 5 * 5,  # conv 10 k1 then avgpool 5
    "gap_v8": 16,  # GAP to 16x1x1, then conv 10 k1
    "maxhead_v9": 12 * 5 * 5,  # test-only: conv 10 k3 then maxpool 3, no Linear anywhere
}


def model_yaml(name: str) -> Path:
    shipped = Path(CONFIG_DIR) / "model" / f"{name}.yaml"
    return shipped if shipped.is_file() else SPECS / f"{name}.yaml"


def build_net(name: str, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    net = instantiate(OmegaConf.load(model_yaml(name)).net)
    # random BN statistics, so the BN layers in body and head really transform their input
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_every_shipped_design_is_covered() -> None:
    shipped = {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")}
    assert shipped | {"maxhead_v9"} == set(EXPECTED_FEATURE_DIM)
    net = build_net("maxhead_v9")
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())


@pytest.mark.parametrize("name", EXPECTED_FEATURE_DIM)
def test_features_then_head_reproduce_forward(name: str) -> None:
    net = build_net(name)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        features = net.features(x)
        rebuilt = net.classify(features)
        forward = net(x)
    assert features.shape == (6, EXPECTED_FEATURE_DIM[name]) == (6, net.feature_dim)
    torch.testing.assert_close(rebuilt, forward, rtol=0, atol=0)
    # the embedding carries information about the input (not a constant)
    assert features.std(dim=0).max() > 0


@pytest.mark.parametrize("name", EXPECTED_FEATURE_DIM)
def test_inference_model_declares_embedding_and_probabilities(name: str) -> None:
    model = InferenceModel(build_net(name)).eval()
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        embedding = model.embed(images)
        probs = model.predict_proba(images)
        both_embedding, both_log_probs = model.embed_and_predict(images)
        log_probs = model(images)
    assert embedding.shape == (5, EXPECTED_FEATURE_DIM[name])
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(probs, log_probs.exp())
    torch.testing.assert_close(both_embedding, embedding)
    torch.testing.assert_close(both_log_probs, log_probs)
    normalised = (images - 0.1307) / 0.3081
    torch.testing.assert_close(embedding, model.net.features(normalised))


def test_a_head_with_nothing_to_learn_is_rejected() -> None:
    with pytest.raises(ValueError, match="no conv or linear layer"):
        ConvNet([{"flatten": True}])


@pytest.mark.parametrize("name", ["gap_v8", "lenet_v1", "maxhead_v9"])
def test_network_pickled_before_the_contract_still_works(name: str) -> None:
    """Old pickles lack ``head_start``/``feature_shape``: both are recovered lazily from the
    current class code, and agree with what construction from the specs records."""
    net = build_net(name)
    expected_split = (net.head_start, net.feature_shape)
    old = pickle.loads(pickle.dumps(net))
    del old.__dict__["head_start"], old.__dict__["feature_shape"], old.__dict__["in_channels"]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(old.classify(old.features(x)), net(x))
        torch.testing.assert_close(old(x), net(x))
    assert (old.head_start, old.feature_shape) == expected_split


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("contract_store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment_id = mlflow.create_experiment("contract", artifact_location=str(root / "artifacts"))
    yield experiment_id
    mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("name", EXPECTED_FEATURE_DIM)
def test_logged_then_loaded_model_gives_embeddings(name: str, mlflow_store: str) -> None:
    """Build -> log as training logs (pickle format) -> load from MLflow -> drift probe."""
    net = build_net(name)
    digits = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    with mlflow.start_run(experiment_id=mlflow_store):
        uri = log_inference_model(net, digits[:4])
    probe = load_registered_model(uri, mlflow.MlflowClient())
    assert isinstance(probe.model, InferenceModel)
    probs, embeddings = probe.predict(digits.numpy())
    assert embeddings.shape == (8, EXPECTED_FEATURE_DIM[name]) and embeddings.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = InferenceModel(net).eval().embed(digits.float().div(255).unsqueeze(1))
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_probe_batches_do_not_change_the_result() -> None:
    model = InferenceModel(build_net("gap_v8"))
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    whole = ModelProbe(model, "m", "1", batch_size=64).predict(images)
    pieces = ModelProbe(model, "m", "1", batch_size=7).predict(images)
    for a, b in zip(whole, pieces, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
