"""Training precision: what ``auto`` picks; bf16-mixed touches only the training forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.datamodule import MnistDataModule
from mnist_mlops.training.precision import resolve_precision
from mnist_mlops.training.trainer import Trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize(("amx", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_uses_bf16_only_on_cpus_with_amx(
    monkeypatch: pytest.MonkeyPatch, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", CPU) == expected
    for explicit in ("32-true", "bf16-mixed"):  # an explicit choice is never second-guessed
        assert resolve_precision(explicit, CPU) == explicit


def test_an_unknown_precision_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"trainer.precision must be one of .*got 'fp8'"):
        Trainer(backend=LocalBackend(num_threads=1), device="cpu", precision="fp8")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_bf16_mixed_runs_the_training_forward_in_bf16_and_keeps_float32_weights(
    synthetic_processed_dir: Path, precision: str
) -> None:
    net_cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / "gap_v8.yaml").net
    module = instantiate(
        {
            "_target_": "mnist_mlops.training.module.ClassifierModule",
            "net": net_cfg,
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
        }
    )
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}
    first_conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, out: seen[m.training].add(out.dtype))
    trainer = Trainer(
        backend=LocalBackend(num_threads=1),
        epochs=1,
        device="cpu",
        precision=precision,
        limit_train_batches=3,
        limit_val_batches=1,
    )
    data = MnistDataModule(synthetic_processed_dir, batch_size=32, eval_batch_size=100, seed=3)
    trainer.fit(module, data)

    training_dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    assert seen[True] == {training_dtype}
    assert seen[False] == {torch.float32}  # validation describes the float32 model
    assert {p.dtype for p in module.net.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert trainer.history[0]["train/loss"] > 0
