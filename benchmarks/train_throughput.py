"""Training throughput: the entrypoint vs a bare PyTorch loop over the same in-memory tensors.

    python benchmarks/train_throughput.py                     # CPU: gap_v8 and lenet_v1, batch 128
    python benchmarks/train_throughput.py --batches 60 --rounds 3 --json out.json
    python benchmarks/train_throughput.py --skip-throughput   # GPU box: only time to 99.4% test acc

The floor is the naive loop a reader would write: NCHW float32 images already normalised in
memory, a forward/NLL/backward/SGD step per batch, nothing else. The framework run goes through
``mnist_mlops.train.train`` (Hydra config, data module, module, trainer, local backend) and its
training phase is timed by a callback exactly like the bare loop (second epoch, after its first
batch, validation excluded), at the entrypoint's default ``trainer.precision=auto`` (bf16-mixed
on CPUs with AMX; ``--precision 32-true`` compares float32 with float32). Both wall-clock
images/s and images per CPU-second are reported: on a machine shared with other jobs the CPU-time
rate is the steadier comparison. Floor and framework alternate ``--rounds`` times in one process
so load from other processes hits both alike; medians are reported.

Time to accuracy (whenever CUDA is available; ``--time-to-acc --device cpu`` forces it): trains
``experiment=best`` with the whole dataset on the device and reports the wall time until the
test accuracy (checked after each epoch, benchmark only) reaches ``--target``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn import functional as F

from mnist_mlops.config import CONFIG_DIR, PROJECT_ROOT
from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD
from mnist_mlops.data.splits import arrays_to_table, load_split, split_dir
from mnist_mlops.data.synthetic import synthetic_digits
from mnist_mlops.train import train
from mnist_mlops.training.callbacks import Callback
from mnist_mlops.training.loop import evaluate
from mnist_mlops.training.precision import PRECISIONS, resolve_precision


def compose_config(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="bench-")
    HydraConfig().set_config(cfg)
    return cfg


def ensure_data(processed_dir: Path | None) -> Path:
    """The real processed splits when present, else synthetic ones of MNIST's shape."""
    real = processed_dir or PROJECT_ROOT / "data" / "processed"
    if (real / "train").exists():
        return real
    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    for offset, (split, size) in enumerate({"train": 12_800, "val": 1_000, "test": 1_000}.items()):
        images, labels = synthetic_digits(size, seed=offset)
        (root / split).mkdir()
        table = arrays_to_table(images, labels, [f"{split}-{i:06d}" for i in range(size)])
        pq.write_table(table, root / split / "part-0.parquet")
    print(f"no processed data at {real}; using synthetic splits in {root}", file=sys.stderr)
    return root


def bare_loop(
    model_name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, batches: int, seed: int
) -> tuple[float, float]:
    """(images/s, images per CPU-second) of the naive NCHW float32 loop, after one warm-up batch."""
    torch.manual_seed(seed)
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{model_name}.yaml")
    net = instantiate(cfg.net).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(images.shape[0])
    wall = cpu = 0.0
    for step in range(batches + 1):
        if step == 1:
            wall, cpu = time.perf_counter(), time.process_time()
        idx = order[step * batch : (step + 1) * batch]
        optimizer.zero_grad()
        loss = F.nll_loss(net(images[idx]), labels[idx])
        loss.backward()
        optimizer.step()
    seen = batches * batch
    return seen / (time.perf_counter() - wall), seen / (time.process_time() - cpu)


class TrainPhaseTimer(Callback):
    """Wall and CPU time of the last epoch's training batches, as the bare loop measures them.

    Timing starts after the epoch's first batch (the bare loop's warm-up) and stops at the last
    batch, so data-module batching, metrics and hooks are inside it and validation is not.
    """

    def __init__(self) -> None:
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self.images = 0

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self.start, self.images = None, 0

    def on_train_batch_end(self, trainer: Any, module: Any, loss: Any, batch_idx: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.start is None:
            self.start = now
            self.batch_size = trainer.datamodule.batch_size
            return
        self.end = now
        self.images += self.batch_size

    def rates(self) -> tuple[float, float]:
        assert self.start is not None and self.end is not None
        return (
            self.images / (self.end[0] - self.start[0]),
            self.images / (self.end[1] - self.start[1]),
        )


def framework_run(
    model_name: str, data_dir: Path, batch: int, batches: int, seed: int, precision: str
) -> tuple[float, float]:
    """(images/s, images per CPU-second) through ``train(cfg)``, second epoch (first warms up).

    The report regime (SGD lr 0.01, momentum 0.9) matches the bare loop's optimizer; precision
    is the entrypoint's default (``auto``) unless ``--precision`` says otherwise.
    """
    cfg = compose_config(
        [
            f"model={model_name}",
            "experiment=report",
            "callbacks=none",
            "~logger",
            f"data.processed_dir={data_dir}",
            f"data.batch_size={batch}",
            f"seed={seed}",
            "trainer.epochs=2",
            "trainer.device=cpu",
            f"trainer.precision={precision}",
            f"trainer.limit_train_batches={batches + 1}",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
        ]
    )
    timer = TrainPhaseTimer()
    train(cfg, callbacks=[timer])
    return timer.rates()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = ensure_data(args.processed_dir)
    train_split = load_split(split_dir(data_dir, "train"), limit=(args.batches + 1) * args.batch)
    images = (
        torch.from_numpy(train_split.images)
        .float()
        .div_(255)
        .sub_(MNIST_MEAN)
        .div_(MNIST_STD)
        .unsqueeze(1)
        .contiguous()
    )
    labels = torch.from_numpy(train_split.labels)
    results: dict[str, Any] = {
        "machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "entrypoint_precision": resolve_precision(args.precision, torch.device("cpu")),
        "batch_size": args.batch,
        "batches": args.batches,
        "rounds": args.rounds,
        "models": {},
    }
    for model_name in args.models:
        floor: list[tuple[float, float]] = []
        framework: list[tuple[float, float]] = []
        for round_ in range(args.rounds):
            floor.append(bare_loop(model_name, images, labels, args.batch, args.batches, round_))
            framework.append(
                framework_run(
                    model_name, data_dir, args.batch, args.batches, round_, args.precision
                )
            )
            print(
                f"{model_name} round {round_ + 1}: bare {floor[-1][0]:.0f} img/s "
                f"({floor[-1][1]:.0f} img/CPU-s), entrypoint {framework[-1][0]:.0f} img/s "
                f"({framework[-1][1]:.0f} img/CPU-s)",
                flush=True,
            )
        summary = {
            "bare_images_per_s": [f[0] for f in floor],
            "entrypoint_images_per_s": [f[0] for f in framework],
            "bare_images_per_cpu_s": [f[1] for f in floor],
            "entrypoint_images_per_cpu_s": [f[1] for f in framework],
        }
        for key in list(summary):
            summary[f"{key}_median"] = statistics.median(summary[key])
        summary["ratio"] = (
            summary["entrypoint_images_per_s_median"] / summary["bare_images_per_s_median"]
        )
        summary["ratio_cpu"] = (
            summary["entrypoint_images_per_cpu_s_median"] / summary["bare_images_per_cpu_s_median"]
        )
        results["models"][model_name] = summary
        print(
            f"{model_name}: bare NCHW float32 loop {summary['bare_images_per_s_median']:.0f} img/s"
            f" | entrypoint ({results['entrypoint_precision']}) "
            f"{summary['entrypoint_images_per_s_median']:.0f} img/s"
            f" | ratio {summary['ratio']:.2f}x (per CPU-second: {summary['ratio_cpu']:.2f}x)",
            flush=True,
        )
    return results


class StopAtTestAccuracy(Callback):
    """Benchmark only: evaluate the test split after every epoch and stop at the target."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.started = time.perf_counter()
        self.reached_s: float | None = None
        self.curve: list[tuple[float, float]] = []

    def on_validation_epoch_end(self, trainer: Any, module: Any, metrics: dict) -> None:
        memory_format = trainer.backend.memory_format
        evaluate(
            module, trainer.datamodule.test_dataloader(), "test", trainer.device, memory_format
        )
        accuracy = module.logged["test/acc"]
        elapsed = time.perf_counter() - self.started
        self.curve.append((elapsed, accuracy))
        print(f"epoch {trainer.current_epoch + 1}: test/acc={accuracy:.4f} after {elapsed:.1f} s")
        if accuracy >= self.target and self.reached_s is None:
            self.reached_s = elapsed
            trainer.should_stop = True


def time_to_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = ensure_data(args.processed_dir)
    device = args.device or "cuda"
    cfg = compose_config(
        [
            "experiment=best",
            "callbacks=none",
            "~logger",
            f"data.processed_dir={data_dir}",
            f"trainer.device={device}",
            f"trainer.epochs={args.max_epochs}",
            f"data.keep_on_device={str(device.startswith('cuda')).lower()}",
            "data.eval_batch_size=10000",
        ]
    )
    stopper = StopAtTestAccuracy(args.target)
    train(cfg, callbacks=[stopper])
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {
        "device": device_name,
        "target": args.target,
        "seconds_to_target": stopper.reached_s,
        "epochs": len(stopper.curve),
        "curve": stopper.curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gap_v8", "lenet_v1"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=80, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the entrypoint's trainer.precision (the bare loop is always float32)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--processed-dir", type=Path, default=None)
    parser.add_argument(
        "--time-to-acc",
        action="store_true",
        help="GPU mode: time to --target test accuracy (needs CUDA or --device)",
    )
    parser.add_argument("--device", default=None, help="device for --time-to-acc (default cuda)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--target", type=float, default=0.994)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    if not args.skip_throughput:
        results["throughput"] = throughput(args)
    if args.time_to_acc or torch.cuda.is_available():
        if args.device is None and not torch.cuda.is_available():
            parser.error("--time-to-acc needs CUDA (or an explicit --device cpu)")
        results["time_to_accuracy"] = time_to_accuracy(args)
        print(json.dumps(results["time_to_accuracy"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
