"""Drift-detector validation: false alarms on a pure null, detection rate on labelled shifts.

    .venv/bin/python benchmarks/drift_power.py --model-uri models:/mnist-classifier@production \\
        [--tracking-uri sqlite:///.../mlflow.db] [--null-split DIR ...] [--sizes 100 500 2000] \\
        [--max-null-windows 300] [--windows 20] [--update-docs docs/drift.md] [--json out.json]

Every window goes through :func:`evaluate_window` with the detectors and thresholds of
``conf/drift.yaml`` (the code the CLI runs) against preprocessing's ``baseline.json`` and the
champion's reference on the val split. Windows never overlap within a condition and size.

- **Pure null** (false alarms): training-population images that are in neither reference:
  ``--null-split`` (default: the processed train split; the gate split may be added: the
  gate only scores models), minus every image of the baseline's
  5,000-image reference sample (matched on its exact feature values, schema 2). For the
  model-based detectors to face a true null too, the champion must not have trained on these
  images: pass the part of the train split the champion was not fitted on (docs/drift.md says
  how the documented champion was trained).
- **Writer shift**: the test split: MNIST's test digits come from other writers than train,
  a real population change, reported separately and not as false alarms.
- **Shifts** (``tests/support/shifts.py``) applied to null-pool images, so detection
  measures the shift alone; label shift keeps digits 0-4; Fashion-MNIST test images (Debian
  package ``dataset-fashion-mnist``) are out of distribution.

Rates come with Wilson 95% intervals. The script also times the full detector set on one
2,000-image window with the champion (real forward pass, no cache).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the shifts are test support: tests.support.shifts
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
SHIFT_POOL = 10_000  # null-pool images each shift is applied to

log = logging.getLogger("drift_power")


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for k successes in n trials (sound at k = 0 or k = n)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def compose_drift_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from mnist_mlops.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="drift", overrides=overrides)


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
    """The Fashion-MNIST test images (the loader the system test shares), or exit saying why."""
    from tests.support.shifts import fashion_mnist_images

    try:
        return fashion_mnist_images()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))


def outside_reference_sample(images: np.ndarray, baseline) -> np.ndarray:
    """Mask of images that are NOT in the baseline's reference sample (exact feature match)."""
    from mnist_mlops.data.features import FEATURE_NAMES, image_features

    if baseline.sample_decimals is not None:
        sys.exit("the baseline stores rounded reference samples (schema 1): re-run preprocessing")
    features = image_features(images)
    rows = np.stack([features[n].astype(np.float64) for n in FEATURE_NAMES], axis=1)
    reference = np.stack([baseline.feature_samples[n] for n in FEATURE_NAMES], axis=1)
    taken = {row.tobytes() for row in reference}
    return np.fromiter((row.tobytes() not in taken for row in rows), bool, len(rows))


def build_conditions(
    null_images: np.ndarray, null_labels: np.ndarray, test_images: np.ndarray, test_labels
) -> dict:
    """name -> (images pool, labels pool or None). Each shift is applied once to its pool."""
    from tests.support.shifts import IMAGE_SHIFTS, label_subset_indices

    rng = np.random.default_rng(0)
    base, base_labels = null_images[:SHIFT_POOL], null_labels[:SHIFT_POOL]
    conditions: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        "null": (null_images, null_labels),
        "writer_shift": (test_images, test_labels),
    }
    for name, shift in IMAGE_SHIFTS.items():
        t0 = time.perf_counter()
        conditions[name] = (shift(base, rng), base_labels)
        log.info("shift %s on %d images in %.1fs", name, len(base), time.perf_counter() - t0)
    keep = label_subset_indices(null_labels)[:SHIFT_POOL]
    conditions["label_shift_0_4"] = (null_images[keep], null_labels[keep])
    conditions["fashion_mnist"] = (load_fashion_mnist(), None)
    return conditions


def load_probe(model_uri: str):
    import mlflow.pytorch

    from mnist_mlops.monitoring.model_probe import ModelProbe

    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return ModelProbe(model=model, uri=model_uri, version="benchmark")


def run(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from mnist_mlops.data.splits import load_split
    from mnist_mlops.monitoring.check import build_detectors, evaluate_window
    from mnist_mlops.monitoring.detectors import Status
    from mnist_mlops.monitoring.reference import Baseline, build_model_reference
    from mnist_mlops.monitoring.sources import Window

    processed = Path(args.processed_dir)
    cfg = compose_drift_config([f"paths.processed_dir={processed}"])
    baseline = Baseline.load(cfg.baseline_path)
    detectors = build_detectors(cfg)
    thresholds = OmegaConf.to_container(cfg.thresholds, resolve=True)
    test = load_split(processed / "test")
    val = load_split(processed / "val")
    null_splits = [load_split(path) for path in args.null_split or [processed / "train"]]
    pool_images = np.concatenate([split.images for split in null_splits])
    pool_labels = np.concatenate([split.labels for split in null_splits])
    outside = outside_reference_sample(pool_images, baseline)
    order = np.random.default_rng(7).permutation(np.flatnonzero(outside))
    null_images, null_labels = pool_images[order], pool_labels[order]
    log.info(
        "null pool: %d of %d images outside the %d-image reference sample",
        len(order),
        len(pool_labels),
        len(next(iter(baseline.feature_samples.values()))),
    )
    results: dict = {
        "sizes": args.sizes,
        "conditions": {},
        "thresholds": thresholds,
        "null_pool": {
            "splits": [str(p) for p in args.null_split or [processed / "train"]],
            "images": len(order),
        },
    }

    probe = reference = None
    conditions = build_conditions(null_images, null_labels, test.images, test.labels)
    if not args.no_model:
        probe = load_probe(args.model_uri)
        reference = build_model_reference(probe, val.images, cache_dir=None, seed=0)
        t0 = time.perf_counter()
        probe = CachedProbe(probe, [images for images, _ in conditions.values()])
        log.info("model outputs for every pool computed once in %.1fs", time.perf_counter() - t0)
        accuracy = {
            "val": float((reference.probabilities.argmax(1) == val.labels).mean()),
            "test": float((probe.predict(test.images)[0].argmax(1) == test.labels).mean()),
            "null_pool": float((probe.predict(null_images)[0].argmax(1) == null_labels).mean()),
        }
        results["model_accuracy"] = accuracy
        log.info("model %s: accuracy %s", args.model_uri, accuracy)

    for name, (images, labels) in conditions.items():
        cap = args.max_null_windows if name == "null" else args.windows
        results["conditions"][name] = {}
        for size in args.sizes:
            n_windows = min(cap, len(images) // size)
            # non-overlapping: consecutive slices of one seeded permutation of the pool
            perm = np.random.default_rng(zlib.crc32(f"{name}/{size}".encode())).permutation(
                len(images)
            )
            alerts = {d: 0 for d in (*DETECTORS, "any")}
            warn_any, seconds = 0, []
            for w in range(n_windows):
                idx = perm[w * size : (w + 1) * size]
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
                alerts["any"] += report.status == Status.ALERT.value
                warn_any += report.status in (Status.WARN.value, Status.ALERT.value)
                for d in DETECTORS:
                    alerts[d] += report.detector_status(d) is Status.ALERT
            row = {"n_windows": n_windows, "alerts": alerts, "warn_or_alert": warn_any}
            row["median_seconds"] = float(np.median(seconds)) if seconds else None
            results["conditions"][name][str(size)] = row
            log.info(
                "%-16s n=%-5d windows=%-4d any=%d %s",
                name,
                size,
                n_windows,
                alerts["any"],
                " ".join(f"{d}={alerts[d]}" for d in DETECTORS),
            )
    results["model_uri"] = args.model_uri if not args.no_model else None
    return results


def timing(args: argparse.Namespace, repeats: int = 5) -> dict:
    """Seconds for the full detector set on one 2,000-image window (a fresh window each time,
    the champion's real forward pass inside), plus the one-off val-split model reference."""
    import torch
    from omegaconf import OmegaConf

    from mnist_mlops.data.splits import load_split
    from mnist_mlops.monitoring.check import build_detectors, evaluate_window
    from mnist_mlops.monitoring.reference import Baseline, build_model_reference
    from mnist_mlops.monitoring.sources import Window

    processed = Path(args.processed_dir)
    cfg = compose_drift_config([f"paths.processed_dir={processed}"])
    baseline = Baseline.load(cfg.baseline_path)
    test = load_split(processed / "test")
    detectors = build_detectors(cfg)
    thresholds = OmegaConf.to_container(cfg.thresholds, resolve=True)
    rng = np.random.default_rng(0)
    out: dict = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    probe = reference = None
    if not args.no_model:
        probe = load_probe(args.model_uri)
        t0 = time.perf_counter()
        reference = build_model_reference(
            probe, load_split(processed / "val").images, cache_dir=None
        )
        out["model_reference_val_s"] = time.perf_counter() - t0
    per_detector: dict[str, list[float]] = {}
    cpu_seconds = []
    for _ in range(repeats):
        idx = rng.choice(len(test), 2000, replace=False)
        window = Window.from_arrays(test.images[idx], test.labels[idx], "timing")
        cpu0 = time.process_time()
        report = evaluate_window(window, baseline, detectors, thresholds, 50, reference, probe)
        cpu_seconds.append(time.process_time() - cpu0)
        for name, seconds in report.timings_s.items():
            per_detector.setdefault(name, []).append(seconds)
    out["window_2000_median_s"] = {k: float(np.median(v)) for k, v in per_detector.items()}
    out["window_2000_max_total_s"] = float(np.max(per_detector["total"]))
    # CPU seconds of this process (all its threads): less sensitive than wall time to other
    # jobs on a shared machine; on idle cores wall time is about this / the threads used
    out["window_2000_median_cpu_s"] = float(np.median(cpu_seconds))
    out["load_average_1m"] = os.getloadavg()[0]
    return out


LABELS = {
    "null": "**pure null**: unseen training-population images (false alarms)",
    "writer_shift": "writer shift: MNIST test split (other writers)",
    "rotation_15": "rotation ±15° about the centre of mass",
    "rotation_30": "rotation ±30° about the centre of mass",
    "rotation_45": "rotation ±45° about the centre of mass",
    "gaussian_noise": "additive Gaussian noise σ = 40 grey levels, clipped",
    "blur": "Gaussian blur σ = 1 px",
    "dilation_2x2": "thicker strokes: 2×2 grey dilation (ink +1 px up/left)",
    "translation": "translation by (±3, ±3) px",
    "inversion": "inversion (black ink on white)",
    "label_shift_0_4": "label shift: digits 0–4 only",
    "fashion_mnist": "Fashion-MNIST test images (unlabelled)",
}


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.0%} [{lo:.0%}, {hi:.0%}]" if n else "–"


def markdown_table(results: dict) -> str:
    lines = []
    for size in (str(s) for s in results["sizes"]):
        lines.append(
            f"\n**Window {size}**: `any` = the run's status is alert (Wilson 95% interval); "
            "`warn+` = warn or alert; then the alert rate of each detector\n"
        )
        lines.append("| condition | windows | any | warn+ | " + " | ".join(DETECTORS) + " |")
        lines.append("|---|---:|---:|---:|" + "---:|" * len(DETECTORS))
        for name, per_size in results["conditions"].items():
            r = per_size[size]
            n = r["n_windows"]
            if n == 0:
                continue
            cells = " | ".join(f"{r['alerts'][d] / n:.0%}" for d in DETECTORS)
            lines.append(
                f"| {LABELS.get(name, name)} | {n} | {_rate(r['alerts']['any'], n)} | "
                f"{r['warn_or_alert'] / n:.0%} | {cells} |"
            )
    return "\n".join(lines) + "\n"


def timing_table(timings: dict) -> str:
    per = timings["window_2000_median_s"]
    rows = [f"| {name} | {seconds:.3f} |" for name, seconds in per.items()]
    return (
        "\n**Cost of one 2,000-image window** (median of 5 fresh windows; the first model-based "
        "detector pays for the champion's forward pass):\n\n| step | seconds |\n|---|---:|\n"
        + "\n".join(rows)
        + f"\n| model reference on val (once per champion version, then cached) | "
        f"{timings.get('model_reference_val_s', float('nan')):.2f} |\n"
        f"\nCPU time of the whole window: {timings['window_2000_median_cpu_s']:.2f} s (median, "
        f"{timings['torch_threads']} torch threads); 1-minute load average during the "
        f"measurement: {timings['load_average_1m']:.1f} on {timings['cpus']} CPUs.\n"
    )


def update_docs(path: Path, body: str) -> None:
    text = path.read_text()
    block = f"{DOC_BEGIN}\n{body}{DOC_END}"
    pattern = re.compile(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {DOC_BEGIN} ... {DOC_END} block to replace")
    path.write_text(pattern.sub(lambda _m: block, text))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processed-dir", default=str(REPO_ROOT / "data" / "processed"))
    parser.add_argument(
        "--null-split",
        nargs="+",
        default=None,
        help="split dirs of training-population images the champion never fitted "
        "(default: <processed-dir>/train)",
    )
    parser.add_argument(
        "--model-uri", default=None, help="e.g. models:/mnist-classifier@production"
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store holding the model")
    parser.add_argument("--no-model", action="store_true", help="input-feature detectors only")
    parser.add_argument("--windows", type=int, default=20, help="max windows per shift and size")
    parser.add_argument("--max-null-windows", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--update-docs", default=None, help="replace the table block in this file")
    parser.add_argument("--note", default="", help="a line about the champion for the docs")
    parser.add_argument("--timing-only", action="store_true")
    args = parser.parse_args()
    if args.model_uri is None and not args.no_model:
        parser.error("--model-uri is required (or --no-model for the input detectors only)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_registry_uri(args.tracking_uri)

    timings = timing(args)
    print(timing_table(timings))
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
        accuracy = results.get("model_accuracy", {})
        meta = (
            f"Generated by `benchmarks/drift_power.py --sizes {' '.join(map(str, args.sizes))} "
            f"--windows {args.windows} --max-null-windows {args.max_null_windows}` in "
            f"{results['wall_seconds']} s (champion `{results['model_uri']}`: "
            + ", ".join(f"{k} accuracy {v:.4f}" for k, v in accuracy.items())
            + f"; null pool {results['null_pool']['images']} images). {args.note}\n"
        )
        update_docs(Path(args.update_docs), meta + timing_table(timings) + table)


if __name__ == "__main__":
    main()
