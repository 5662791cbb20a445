"""The one batched scorer: same outputs whatever the batch size, as the model gives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.synthetic import synthetic_digits
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.models.scoring import score_images, served_input


@pytest.fixture(scope="module")
def model() -> InferenceModel:
    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(f"{CONFIG_DIR}/model/gap_v8.yaml").net)
    return InferenceModel(net, mean=0.2, std=0.4).eval()


def test_scores_match_one_whole_pass_for_every_batch_size(model: InferenceModel) -> None:
    images, labels = synthetic_digits(53, seed=7)
    with torch.no_grad():
        x = torch.from_numpy(images).float().div(255).unsqueeze(1)
        embedding, log_probs = model.embed_and_predict(x)
        nll = float(F.nll_loss(log_probs, torch.from_numpy(labels), reduction="sum"))
    for batch_size in (1, 7, 53, 1000):
        scores = score_images(model, images, batch_size, labels=labels, embeddings=True)
        np.testing.assert_allclose(scores.log_probs, log_probs.numpy(), atol=1e-5)
        np.testing.assert_allclose(scores.probabilities, log_probs.exp().numpy(), atol=1e-6)
        np.testing.assert_allclose(scores.embeddings, embedding.numpy(), atol=1e-5)
        assert scores.nll_sum == pytest.approx(nll, rel=1e-5)
        assert (scores.predicted == log_probs.argmax(1).numpy()).all()
    plain = score_images(model, images, 10)
    assert plain.embeddings is None and plain.nll_sum is None


def test_input_forms_give_the_same_served_tensor() -> None:
    images, _ = synthetic_digits(5, seed=1)
    expected = torch.from_numpy(images).float().div(255).unsqueeze(1)
    for form in (images, images.reshape(5, 784), images.astype(np.float32) / 255.0):
        assert torch.equal(served_input(form), expected)


def test_no_images_and_bad_batch_sizes(model: InferenceModel) -> None:
    empty = score_images(model, np.zeros((0, 28, 28), np.uint8), embeddings=True)
    assert empty.probabilities.shape == (0, 10) and empty.embeddings.shape == (0, 0)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        score_images(model, np.zeros((1, 28, 28), np.uint8), 0)
