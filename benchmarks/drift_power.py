"""Drift-detector validation: false-alarm rate on clean MNIST windows, detection rate on shifts.

    .venv/bin/python benchmarks/drift_power.py [--model-uri URI] [--windows 50 --clean-windows 200]
        [--sizes 100 500 2000] [--update-docs docs/drift.md] [--json out.json]

The baseline is preprocessing's ``baseline.json`` (the 55k training split); clean windows are
drawn from the 10k TEST split, which the baseline never saw (different writers), so a false
alarm here is what production would see on genuinely new in-distribution digits. Shifted
windows apply :mod:`mnist_mlops.monitoring.shifts` to test images; label shift keeps only
digits 0-4; out-of-distribution windows are Fashion-MNIST test images (Debian package
``dataset-fashion-mnist``). Every window goes through :func:`evaluate_window` with the
detectors and thresholds of ``conf/drift.yaml``: the code that runs in production.

The model for the label-free detectors is ``--model-uri`` when given (e.g. the registry's
``models:/mnist-classifier@production``); otherwise a LeNet (``model=lenet_v1``) is trained
for one epoch with the project's own ``train(cfg)`` into a temporary MLflow store.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DOC_BEGIN = "<!-- drift-power:begin -->"
DOC_END = "<!-- drift-power:end -->"
DETECTORS = (
    "label_psi",
    "pixel_psi",
    "feature_psi",
    "feature_ks",
    "prediction_psi",
    "confidence_ks",
    "embedding_mmd",
)

log = logging.getLogger("drift_power")


def compose_drift_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from mnist_mlops.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="drift", overrides=overrides)


def train_fallback_model(processed_dir: Path, workdir: Path) -> str:
    """One epoch of LeNet via the project's ``train(cfg)``; returns the logged model URI."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mnist_mlops.config import CONFIG_DIR
    from mnist_mlops.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                "model=lenet_v1",
                "trainer.epochs=1",
                "trainer.device=cpu",
                "callbacks=none",
            ],
        )
    with open_dict(cfg):
        cfg.data.processed_dir = str(processed_dir)
        cfg.paths.log_dir = str(workdir / "outputs")
        cfg.paths.output_dir = str(workdir / "outputs" / "run")
        cfg.paths.mlflow_dir = str(workdir / "mlruns")
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        cfg.registry.tracking_uri = f"sqlite:///{workdir}/mlruns/mlflow.db"
        cfg.registry.artifact_location = str(workdir / "mlruns" / "artifacts")
    HydraConfig().set_config(cfg)
    from mnist_mlops.tracking.setup import configure_mlflow

    configure_mlflow(cfg.registry)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    log.info("fallback model: test/acc=%.4f (%s)", metrics["test/acc"], metrics["model_uri"])
    return str(metrics["model_uri"])


class CachedProbe:
    """The real model probe behind a content-addressed cache: each distinct image is run
    through the model once, however many windows it lands in (identical bytes -> identical
    outputs, so results equal running the model per window; only faster)."""

    def __init__(self, probe, pools: list[np.ndarray]) -> None:
        self.uri, self.version = probe.uri, probe.version
        self._rows: dict[bytes, int] = {}
        probs, embeddings, offset = [], [], 0
        for pool in pools:
            p, e = probe.predict(pool)
            for i, img in enumerate(pool):
                self._rows.setdefault(img.tobytes(), offset + i)
            probs.append(p)
            embeddings.append(e)
            offset += len(pool)
        self._probs = np.concatenate(probs)
        self._embeds = np.concatenate(embeddings)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.fromiter((self._rows[img.tobytes()] for img in images), np.int64, len(images))
        return self._probs[rows], self._embeds[rows]


def load_fashion_mnist() -> np.ndarray:
    from mnist_mlops.data.idx import IMAGES_MAGIC, read_idx

    path = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"{path} missing: apt-get install -y dataset-fashion-mnist")
    return np.asarray(read_idx(path, IMAGES_MAGIC))


def build_conditions(test_images: np.ndarray, test_labels: np.ndarray) -> dict:
    """name -> (images pool, labels pool or None). Each shift is applied once to the pool."""
    from mnist_mlops.monitoring.shifts import IMAGE_SHIFTS, label_subset_indices

    rng = np.random.default_rng(0)
    conditions: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        "clean": (test_images, test_labels)
    }
    for name, shift in IMAGE_SHIFTS.items():
        t0 = time.perf_counter()
        conditions[name] = (shift(test_images, rng), test_labels)
        log.info(
            "shift %s applied to %d images in %.1fs",
            name,
            len(test_images),
            time.perf_counter() - t0,
        )
    keep = label_subset_indices(test_labels)
    conditions["label_shift_0_4"] = (test_images[keep], test_labels[keep])
    conditions["fashion_mnist"] = (load_fashion_mnist(), None)
    return conditions


def run(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from mnist_mlops.data.splits import load_split
    from mnist_mlops.monitoring.check import build_detectors, evaluate_window
    from mnist_mlops.monitoring.detectors import Status
    from mnist_mlops.monitoring.model_probe import ModelProbe
    from mnist_mlops.monitoring.reference import Baseline, build_model_reference
    from mnist_mlops.monitoring.sources import Window

    processed = Path(args.processed_dir)
    cfg = compose_drift_config([f"paths.processed_dir={processed}"])
    baseline = Baseline.load(cfg.baseline_path)
    test = load_split(processed / "test")
    val = load_split(processed / "val")
    detectors = build_detectors(cfg)
    thresholds = OmegaConf.to_container(cfg.thresholds, resolve=True)

    probe = None
    reference = None
    if not args.no_model:
        import mlflow.pytorch

        model_uri = args.model_uri
        if model_uri is None:
            model_uri = train_fallback_model(
                processed, Path(tempfile.mkdtemp(prefix="drift_power_"))
            )
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
        probe = ModelProbe(model=model, uri=model_uri, version="benchmark")
        reference = build_model_reference(probe, val.images, cache_dir=None, seed=0)
        acc = float((reference.probabilities.argmax(1) == val.labels).mean())
        log.info("model %s: val acc %.4f", model_uri, acc)

    conditions = build_conditions(test.images, test.labels)
    if probe is not None:
        t0 = time.perf_counter()
        probe = CachedProbe(probe, [images for images, _ in conditions.values()])
        log.info("model outputs for every pool computed once in %.1fs", time.perf_counter() - t0)
    results: dict = {"sizes": args.sizes, "conditions": {}, "thresholds": thresholds}
    for name, (images, labels) in conditions.items():
        n_windows = args.clean_windows if name == "clean" else args.windows
        results["conditions"][name] = {}
        for size in args.sizes:
            rng = np.random.default_rng(zlib.crc32(f"{name}/{size}".encode()))
            counts = {d: 0 for d in (*DETECTORS, "any")}
            warn_any = 0
            seconds = []
            for w in range(n_windows):
                idx = rng.choice(len(images), size=size, replace=False)
                window = Window.from_arrays(
                    images[idx], None if labels is None else labels[idx], name
                )
                report = evaluate_window(
                    window,
                    baseline,
                    detectors,
                    thresholds,
                    int(cfg.min_window_size),
                    model_reference=reference,
                    probe=probe,
                    seed=w,
                )
                seconds.append(report.timings_s["total"])
                counts["any"] += report.status == Status.ALERT.value
                warn_any += report.status in (Status.WARN.value, Status.ALERT.value)
                for d in DETECTORS:
                    counts[d] += report.detector_status(d) is Status.ALERT
            rates = {d: c / n_windows for d, c in counts.items()}
            rates["warn_or_alert"] = warn_any / n_windows
            rates["n_windows"] = n_windows
            rates["median_seconds"] = float(np.median(seconds))
            results["conditions"][name][str(size)] = rates
            log.info(
                "%-16s n=%-5d any=%.2f %s",
                name,
                size,
                rates["any"],
                " ".join(f"{d}={rates[d]:.2f}" for d in DETECTORS),
            )
    results["model_uri"] = None if probe is None else probe.uri
    return results


def timing(args: argparse.Namespace, repeats: int = 20) -> dict:
    """Seconds for one 2,000-image window: the input-feature detectors alone (the always-on
    path), then, with a model, each model-based detector (the first one to need the model's
    outputs pays for the forward pass) and the one-off, cached val-split reference."""
    from omegaconf import OmegaConf

    from mnist_mlops.data.splits import load_split
    from mnist_mlops.monitoring.check import build_detectors, evaluate_window
    from mnist_mlops.monitoring.reference import Baseline
    from mnist_mlops.monitoring.sources import Window

    processed = Path(args.processed_dir)
    cfg = compose_drift_config([f"paths.processed_dir={processed}"])
    baseline = Baseline.load(cfg.baseline_path)
    test = load_split(processed / "test")
    all_detectors = build_detectors(cfg)
    input_only = ("label_psi", "pixel_psi", "feature_psi", "feature_ks")
    detectors = {k: v for k, v in all_detectors.items() if k in input_only}
    thresholds = OmegaConf.to_container(cfg.thresholds, resolve=True)
    rng = np.random.default_rng(0)

    def window() -> Window:
        idx = rng.choice(len(test), 2000, replace=False)
        return Window.from_arrays(test.images[idx], test.labels[idx], "timing")

    totals = []
    for _ in range(repeats):
        w = window()
        t0 = time.perf_counter()
        evaluate_window(w, baseline, detectors, thresholds, 50)
        totals.append(time.perf_counter() - t0)
    out = {
        "feature_only_2000_median_s": float(np.median(totals)),
        "feature_only_2000_max_s": float(np.max(totals)),
    }
    if args.model_uri and not args.no_model:
        import mlflow.pytorch

        from mnist_mlops.monitoring.model_probe import ModelProbe
        from mnist_mlops.monitoring.reference import build_model_reference

        probe = ModelProbe(
            mlflow.pytorch.load_model(args.model_uri, map_location="cpu"), args.model_uri, "t"
        )
        val = load_split(processed / "val")
        t0 = time.perf_counter()
        reference = build_model_reference(probe, val.images, cache_dir=None)
        out["model_reference_val_5000_s"] = time.perf_counter() - t0
        per_detector: dict[str, list[float]] = {}
        for _ in range(5):
            report = evaluate_window(
                window(), baseline, all_detectors, thresholds, 50, reference, probe
            )
            for name, seconds in report.timings_s.items():
                per_detector.setdefault(name, []).append(seconds)
        out["with_model_2000_median_s"] = {k: float(np.median(v)) for k, v in per_detector.items()}
    return out


LABELS = {
    "clean": "clean MNIST test (false alarms)",
    "rotation_15": "rotation ±15°",
    "rotation_30": "rotation ±30°",
    "rotation_45": "rotation ±45°",
    "gaussian_noise": "Gaussian noise σ=40/255",
    "blur": "Gaussian blur σ=1 px",
    "thicker_strokes": "thicker strokes (3×3 dilation)",
    "translation": "translation ±3 px",
    "inversion": "inversion (black on white)",
    "label_shift_0_4": "label shift (digits 0–4 only)",
    "fashion_mnist": "Fashion-MNIST (OOD)",
}


def markdown_table(results: dict) -> str:
    sizes = [str(s) for s in results["sizes"]]
    cols = ("any", *DETECTORS)
    lines = []
    for size in sizes:
        lines.append(
            f"\n**Window {size}** (alert rate; `any` = the run's overall status is alert)\n"
        )
        lines.append("| condition | windows | " + " | ".join(cols) + " |")
        lines.append("|---|---:|" + "---:|" * len(cols))
        for name, per_size in results["conditions"].items():
            r = per_size[size]
            cells = " | ".join(f"{r[c]:.0%}" for c in cols)
            lines.append(f"| {LABELS.get(name, name)} | {r['n_windows']} | {cells} |")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str, meta: str) -> None:
    text = path.read_text()
    block = f"{DOC_BEGIN}\n{meta}\n{table}{DOC_END}"
    pattern = re.compile(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {DOC_BEGIN} ... {DOC_END} block to replace")
    path.write_text(pattern.sub(lambda _m: block, text))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processed-dir", default=str(REPO_ROOT / "data" / "processed"))
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--no-model", action="store_true", help="input-feature detectors only")
    parser.add_argument("--windows", type=int, default=50, help="windows per shifted condition")
    parser.add_argument(
        "--clean-windows", type=int, default=200, help="clean windows (false alarms)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--update-docs", default=None, help="replace the table block in this file")
    parser.add_argument("--timing-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    timings = timing(args)
    log.info("timing: %s", timings)
    if args.timing_only:
        print(json.dumps(timings, indent=2))
        return
    started = time.perf_counter()
    results = run(args)
    results["timing"] = timings
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    table = markdown_table(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.update_docs:
        meta = (
            f"Generated by `benchmarks/drift_power.py --windows {args.windows} --clean-windows "
            f"{args.clean_windows}` (model: `{results['model_uri']}`; {results['wall_seconds']} s "
            "on the 2-core CPU dev machine)."
        )
        update_docs(Path(args.update_docs), table, meta)


if __name__ == "__main__":
    main()
