"""Training objectives: NLL, label smoothing, and distillation from a logged teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.errors import InstantiationException
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn import functional as F

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.models.convnet import ConvNet
from mnist_mlops.train import train
from mnist_mlops.training.losses import ClassificationLoss, DistillationLoss

LAYERS = [{"conv": 8, "k": 3, "ops": ["relu", "bn"]}, {"avgpool": 26}, {"conv": 10, "k": 1}]


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def test_nll_and_label_smoothing_match_their_definitions() -> None:
    x, y = _batch()
    log_probs = F.log_softmax(torch.randn(16, 10, generator=torch.Generator().manual_seed(1)), 1)
    assert ClassificationLoss()(log_probs, y, x) == F.nll_loss(log_probs, y)
    eps = 0.1
    smoothed = (1 - eps) * F.nll_loss(log_probs, y) - eps * log_probs.mean(dim=1).mean()
    assert ClassificationLoss(eps)(log_probs, y, x) == pytest.approx(float(smoothed), rel=1e-5)
    with pytest.raises(ValueError, match=r"model.loss.label_smoothing must be in \[0, 1\)"):
        ClassificationLoss(1.5)


def test_distillation_mixes_labels_and_a_frozen_teacher() -> None:
    torch.manual_seed(0)
    student = ConvNet(LAYERS)
    teacher = copy.deepcopy(student)
    x, y = _batch()
    with torch.no_grad():
        log_probs = student.eval()(x)
    nll = F.nll_loss(log_probs, y)
    # weight 0 is plain NLL; a teacher identical to the student adds nothing (KL = 0)
    assert DistillationLoss(teacher, weight=0.0)(log_probs, y, x) == pytest.approx(float(nll))
    assert DistillationLoss(teacher, weight=1.0)(log_probs, y, x) == pytest.approx(0, abs=1e-6)

    # a different teacher pulls the student: gradients reach the student, never the teacher
    other = ConvNet(LAYERS)
    loss = DistillationLoss(other, weight=0.5, temperature=2.0)
    loss.train()  # the module's train() must not put the teacher's BatchNorm in training mode
    assert not other.training
    student.train()
    value = loss(student(x), y, x)
    assert value.item() > 0.5 * F.nll_loss(student(x), y).item()
    value.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in other.parameters())
    with pytest.raises(ValueError, match="model.loss.temperature must be > 0"):
        DistillationLoss(other, temperature=0)


def test_a_run_distills_from_a_logged_teacher_and_bad_teachers_fail_clearly(
    cfg_train: DictConfig, mlflow_db: str
) -> None:
    teacher_run = train(cfg_train)["run_id"]
    distill = OmegaConf.load(f"{CONFIG_DIR}/model/loss/distill.yaml")
    with open_dict(cfg_train):
        cfg_train.model.loss = distill
        cfg_train.model.loss.teacher.model_uri = f"runs:/{teacher_run}/model"
    metrics = train(cfg_train)
    run = MlflowClient(tracking_uri=mlflow_db).get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.loss.teacher.model_uri"] == f"runs:/{teacher_run}/model"
    assert run.data.params["model/params_total"] == "13808"  # the student alone

    with open_dict(cfg_train):
        cfg_train.model.loss.teacher.model_uri = "runs:/0123456789abcdef/model"
    # hydra wraps the loader's ValueError; the message naming the key survives
    with pytest.raises(InstantiationException, match="model_uri='runs:/0123456789abcdef/model'"):
        train(cfg_train)
    with open_dict(cfg_train):
        cfg_train.model.loss.teacher.model_uri = f"runs:/{teacher_run}/model"
        cfg_train.data.mean = 0.5
    with pytest.raises(InstantiationException, match="was trained with mean/std"):
        train(cfg_train)
