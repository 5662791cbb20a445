"""The whole MLOps loop on the default model, run the way a user runs it, on real MNIST.

Spark preprocessing of the real IDX files -> train gap_v8 -> register (the gate's first-champion
floor) -> ``python -m mnist_mlops.serve`` (uvicorn, 2 workers, over HTTP) -> real test digits
posted as PNG and as JSON -> drift on the prediction log: no alert -> rotated, inverted, noisy
digits and real Fashion-MNIST images -> drift alerts -> trusted feedback labels ->
``retrain trigger=drift`` -> the gate promotes a better challenger and the running server serves
it without a restart -> a deliberately worse challenger is rejected and production is untouched.

Every step is a real entrypoint in its own process, against one project directory. Training is
shortened (one epoch, fewer batches) to fit CI on 2 cores; nothing is replaced by a stand-in.
Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (``.ci/run`` installs it); without
it the test fails, naming the package.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from support.processes import free_port, stop_process_group, wait_for_http
from support.shifts import fashion_mnist_images, gaussian_noise, invert, rotate

from mnist_mlops.data.splits import MnistArrays, load_split

pytestmark = pytest.mark.slow

MODEL = "mnist-classifier"
# The champion: the default recipe (gap_v8, SGD) for part of one epoch. The gate's floor for a
# first champion is lowered to match (0.95 needs a full epoch; see conf/registry/sqlite.yaml).
CHAMPION_TRAINING = ["trainer.epochs=1", "trainer.limit_train_batches=150"]
FIRST_CHAMPION_FLOOR = "registry.gate.min_accuracy=0.90"
# The challenger a drift alert triggers: more of the epoch, plus the feedback, so it is clearly
# better (measured: 0.933 -> 0.977 on the gate split with the whole epoch; b=243, c=23).
CHALLENGER_TRAINING = ["trainer.epochs=1", "trainer.limit_train_batches=250"]
# A deliberately worse challenger: it never learns anything (learning rate 0).
WORSE_TRAINING = ["trainer.epochs=1", "trainer.limit_train_batches=5", "model.optimizer.lr=0.0"]
N_CLEAN = 300  # real test digits, half as PNG and half as JSON
N_PER_SHIFT = 100  # rotated, inverted, noisy digits; Fashion-MNIST images
STEP_TIMEOUT_S = 900


def _quote_list(items: list[str]) -> str:
    return "[" + ",".join(f'"{item}"' for item in items) + "]"


class Project:
    """One project directory that every entrypoint of the loop shares."""

    def __init__(self, root: Path, raw_dir: Path) -> None:
        self.root = root
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MLFLOW_")
            and k not in ("MNIST_PREDICTION_LOG_DIR", "MNIST_FEEDBACK_SECRET", "MNIST_MLOPS_ROOT")
        }
        self.env["MNIST_RAW_DIR"] = str(raw_dir)
        self.timings: dict[str, float] = {}

    @property
    def overrides(self) -> list[str]:
        return [f"paths.root_dir={self.root}"]

    def run(self, step: str, module: str, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """``python -m module`` with the project's paths; returns its output, checks its exit."""
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", module, *self.overrides, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        self.timings[step] = time.monotonic() - start
        output = proc.stdout + proc.stderr
        assert proc.returncode in ok, f"{step}: exit {proc.returncode}\n{output[-6000:]}"
        self.last_returncode = proc.returncode
        return output

    def client(self):
        from mlflow.tracking import MlflowClient

        # the registry URI named too: without it MLflow falls back to the process-wide one,
        # which an earlier in-process test may have pointed at another store
        uri = f"sqlite:///{self.root}/mlruns/mlflow.db"
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def production_version(self) -> str:
        return str(self.client().get_model_version_by_alias(MODEL, "production").version)

    def read_json(self, relative: str) -> dict:
        return json.loads((self.root / relative).read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, real_raw_dir: Path) -> Project:
    return Project(tmp_path_factory.mktemp("closed-loop"), real_raw_dir)


@pytest.fixture(scope="module")
def server(project: Project) -> Iterator[str]:
    """The champion behind ``python -m mnist_mlops.serve`` (uvicorn, 2 workers) on a free port."""
    port = free_port()
    log = (project.root / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_mlops.serve",
            *project.overrides,
            f"server.port={port}",
            "server.workers=2",
            "serving.poll_interval_s=1",
            # one test client plays every user: the per-IP feedback rate limit would throttle it
            "serving.feedback_rate_per_s=0",
        ],
        env=project.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ready", proc, timeout=300)
        yield url
    finally:
        stop_process_group(proc)
        log.close()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _predict(http: httpx.Client, image: np.ndarray, as_png: bool) -> dict:
    if as_png:
        response = http.post("/predict", content=_png(image), headers={"Content-Type": "image/png"})
    else:
        response = http.post("/predict", json={"pixels": image.tolist(), "scale": "0-255"})
    assert response.status_code == 200, response.text
    return response.json()


def _served_version(http: httpx.Client) -> str:
    response = http.get("/model")
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def _wait_until_served(http: httpx.Client, version: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _served_version(http) == version:
            return True
        time.sleep(0.5)
    return False


def _pick(arrays: MnistArrays, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return arrays.images[idx], arrays.labels[idx]


def test_closed_loop_on_the_default_model(project: Project, request) -> None:
    # first, so a machine without the package fails in seconds, not after training
    fashion = fashion_mnist_images()
    # ---- 1. real Spark preprocessing of the real IDX files ----------------------------------
    project.run("preprocess", "mnist_mlops.preprocess")
    processed = project.root / "data" / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    assert manifest["splits"]["test"]["rows"] == 10_000
    assert {"train", "val", "gate", "test"} <= set(manifest["splits"])

    # ---- 2. train the default model (gap_v8), shortened --------------------------------------
    report_dir = project.root / "reports" / "train"
    out = project.run(
        "train champion",
        "mnist_mlops.train",
        f"report_dir={report_dir}",
        "callbacks=console",
        *CHAMPION_TRAINING,
    )
    assert "epoch 1/1" in out
    champion_run = json.loads((report_dir / "run.json").read_text())["run_id"]
    params = project.client().get_run(champion_run).data.params
    assert (params["model.name"], params["model/params_total"]) == ("gap_v8", "13808")

    # ---- 3. register: first champion, through the gate's floor -------------------------------
    out = project.run(
        "register",
        "mnist_mlops.register",
        f"run_file={report_dir / 'run.json'}",
        FIRST_CHAMPION_FLOOR,
    )
    champion = project.production_version()
    assert project.client().get_model_version(MODEL, champion).run_id == champion_run

    # ---- 4. serve it over HTTP and send real test digits, as PNG and as JSON -----------------
    url = request.getfixturevalue("server")
    test = load_split(processed / "test")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test))
    clean_images, clean_labels = _pick(test, order[:N_CLEAN])
    with httpx.Client(base_url=url, timeout=60) as http:
        assert _served_version(http) == champion
        start = time.monotonic()
        clean = [_predict(http, image, as_png=i % 2 == 0) for i, image in enumerate(clean_images)]
        project.timings["post clean"] = time.monotonic() - start
        assert {p["model"]["version"] for p in clean} == {champion}
        predicted = np.array([p["predicted"] for p in clean])
        png, js = slice(0, None, 2), slice(1, None, 2)
        acc_png = float((predicted[png] == clean_labels[png]).mean())
        acc_json = float((predicted[js] == clean_labels[js]).mean())
        # the picture path must not cost accuracy against the raw pixels
        assert acc_json > 0.85 and acc_png > acc_json - 0.05, (acc_png, acc_json)

        # ---- 5. drift on the prediction log: clean traffic does not alert --------------------
        drift = ["source=prediction_log", f"source.last_n={N_CLEAN}"]
        project.run("drift clean", "mnist_mlops.drift", *drift, ok=(0, 10, 20))
        clean_report = project.read_json("reports/drift/drift_report.json")
        assert project.last_returncode == 0, (
            f"clean real digits raised drift status {clean_report['status']}: "
            f"{clean_report.get('message')}"
        )
        assert clean_report["window"]["n_images"] == N_CLEAN
        assert not (project.root / "reports" / "drift" / "DRIFT_ALERT.json").exists()

        # ---- 6. rotated, inverted, noisy digits and Fashion-MNIST: drift alerts --------------
        shift_rng = np.random.default_rng(1)
        base_images, base_labels = _pick(test, order[N_CLEAN : N_CLEAN + 3 * N_PER_SHIFT])
        parts = np.split(np.arange(4 * N_PER_SHIFT), 4)
        shifted_images = np.concatenate(
            [
                rotate(45)(base_images[parts[0]], shift_rng),
                invert()(base_images[parts[1]], shift_rng),
                gaussian_noise(80.0)(base_images[parts[2]], shift_rng),
                fashion[shift_rng.choice(len(fashion), N_PER_SHIFT, replace=False)],
            ]
        )
        # Fashion-MNIST has no digit label: a placeholder the feedback step never sends
        base_labels = np.concatenate([base_labels, np.full(N_PER_SHIFT, -1, np.int64)])
        mix = shift_rng.permutation(len(shifted_images))  # arrive interleaved, as traffic would
        shifted = [_predict(http, shifted_images[i], as_png=False) for i in mix]
        shifted_labels = base_labels[mix]
        # the window is exactly the shifted traffic
        drift_shifted = ["source=prediction_log", f"source.last_n={len(shifted)}"]
        out = project.run("drift shifted", "mnist_mlops.drift", *drift_shifted, ok=(0, 10, 20))
        shifted_report = project.read_json("reports/drift/drift_report.json")
        assert project.last_returncode == 20, (shifted_report["status"], out[-3000:])
        assert shifted_report["window"]["n_images"] == len(shifted)
        assert (project.root / "reports" / "drift" / "DRIFT_ALERT.json").is_file()

        # ---- 7. users label what they got, with the prediction's feedback token --------------
        labelled = [(p, int(y)) for p, y in zip(clean, clean_labels, strict=True)]
        # the rotated and inverted ones are still digits; noise and clothes get no label
        not_digits = set(parts[2]) | set(parts[3])
        labelled += [
            (p, int(y))
            for p, y, i in zip(shifted, shifted_labels, mix, strict=True)
            if i not in not_digits
        ]
        assert all(0 <= label <= 9 for _, label in labelled)
        start = time.monotonic()
        for prediction, label in labelled:
            answer = http.post(
                "/feedback",
                json={
                    "id": prediction["id"],
                    "label": label,
                    "feedback_token": prediction["feedback_token"],
                },
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["trusted"] is True
        project.timings["post feedback"] = time.monotonic() - start

        # ---- 8. the drift alert triggers a retrain; the gate promotes a better challenger ----
        out = project.run(
            "retrain (drift)",
            "mnist_mlops.retrain",
            "trigger=drift",
            f"train.overrides={_quote_list(CHALLENGER_TRAINING)}",
        )
        outcome = project.read_json("reports/retrain/last_retrain.json")
        assert outcome["status"] == "promoted", outcome["reason"]
        assert "drift alert marker" in outcome["reason"]
        # the training child's progress reached the console, with its log's path
        assert "[train] epoch 1/1" in out and f"log in {outcome['train_log']}" in out
        # it trained on the older feedback and was gated on the gate split + the newest feedback
        assert outcome["feedback"]["splits"]["train"]["rows"] + outcome["feedback"]["splits"][
            "recent_eval"
        ]["rows"] == len(labelled)
        assert set(outcome["decision"]["challenger_scores"]) == {"gate", "recent_feedback"}
        new = str(outcome["version"])
        assert project.production_version() == new != champion
        run = project.client().get_run(outcome["run_id"])
        assert run.data.tags["feedback.snapshot"] == outcome["feedback"]["snapshot_id"]
        assert not (project.root / "reports" / "drift" / "DRIFT_ALERT.json").exists()

        # ---- 9. the running server serves it, without a restart ------------------------------
        assert _wait_until_served(http, new), "the server kept serving the old champion"
        after = [_predict(http, image, as_png=False) for image in clean_images[:20]]
        assert {p["model"]["version"] for p in after} == {new}

        # ---- 10. a deliberately worse challenger leaves production untouched -----------------
        out = project.run(
            "retrain (worse)",
            "mnist_mlops.retrain",
            "trigger=force",
            f"train.overrides={_quote_list(WORSE_TRAINING)}",
        )
        worse = project.read_json("reports/retrain/last_retrain.json")
        assert worse["status"] == "rejected", worse["reason"]
        assert worse["decision"]["challenger_scores"]["gate"] < 0.5
        assert project.production_version() == new
        time.sleep(3)  # three alias polls: nothing may change
        assert _served_version(http) == new
        again = [_predict(http, image, as_png=True) for image in clean_images[:20]]
        assert {p["model"]["version"] for p in again} == {new}

    print("closed loop step times (s):", {k: round(v, 1) for k, v in project.timings.items()})
