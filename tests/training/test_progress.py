"""Console progress: a real (tiny) training run prints one line per epoch with time and ETA."""

from __future__ import annotations

import re

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mnist_mlops.train import train
from mnist_mlops.training.callbacks import ConsoleProgress, format_duration


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 4.4, 59.6, 75, 4000)] == [
        "0s",
        "4s",
        "1m00s",
        "1m15s",
        "1h06m40s",
    ]


def test_console_progress_prints_every_epoch_with_an_eta(
    cfg_train: DictConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_dict(cfg_train):
        cfg_train.trainer.epochs = 3
        cfg_train.logger = None
        cfg_train.callbacks = {
            "console": {"_target_": "mnist_mlops.training.callbacks.ConsoleProgress"}
        }
    assert isinstance(instantiate(cfg_train.callbacks.console), ConsoleProgress)
    metrics = train(cfg_train)
    out = capsys.readouterr().out
    assert "training: 3 epochs x 4 batches on cpu" in out
    lines = re.findall(
        r"^epoch (\d)/3  train/loss=(\S+)  .*val/acc=(\S+)  time=(\S+)  ETA (\S+)$", out, flags=re.M
    )
    assert [int(line[0]) for line in lines] == [1, 2, 3]
    # the last line shows the last epoch's own metrics, and nothing is left to wait for
    assert float(lines[-1][2]) == pytest.approx(metrics["val/acc"], abs=5e-5)
    assert lines[-1][4] == "0s"
    assert re.search(r"^test \(best epoch \d\): test/acc=", out, flags=re.M)
