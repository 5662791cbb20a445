"""The HTTP contract through TestClient: predictions, inputs of every kind, errors, feedback."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serving_helpers import make_settings

from mnist_mlops.data.splits import load_split
from mnist_mlops.predictions import read_prediction_log
from mnist_mlops.serving.app import create_app


@pytest.fixture(scope="module")
def digits(synthetic_processed_dir):
    return load_split(synthetic_processed_dir / "test", limit=32)


@pytest.fixture(scope="module")
def expected_probs(api, digits):
    """What the served model itself says about the digits (the API must agree)."""
    uri = api.get("/model").json()["uri"]
    model = mlflow.pytorch.load_model(uri, map_location="cpu").eval()
    with torch.inference_mode():
        x = torch.from_numpy(digits.images).float().unsqueeze(1) / 255.0
        return model(x).exp().numpy()


def test_health_ready_model(api, standin_store):
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = api.get("/model").json()
    assert info["source"] == "registry" and info["version"] == "1"
    assert info["graph"] == "frozen" and info["precision"] == "float32"
    assert info["run_id"] == standin_store.good.run_id
    assert info["metrics"]["test/acc"] == pytest.approx(standin_store.good.test_acc)


def test_predict_flat_unit_and_square_byte_agree_with_the_model(api, digits, expected_probs):
    image = digits.images[0]
    flat = api.post("/predict", json={"pixels": (image / 255.0).ravel().tolist(), "scale": "0-1"})
    square = api.post("/predict", json={"pixels": image.tolist(), "scale": "0-255"})
    assert flat.status_code == square.status_code == 200
    for body in (flat.json(), square.json()):
        np.testing.assert_allclose(body["probabilities"], expected_probs[0], atol=1e-5)
        assert body["predicted"] == int(expected_probs[0].argmax())
        assert body["model"] == {"name": "mnist-classifier", "version": "1", "source": "registry"}
        assert len(body["id"]) == 32
    assert flat.json()["id"] != square.json()["id"]


def test_batch_json_and_raw_bytes_agree_with_the_model(api, digits, expected_probs):
    as_json = api.post(
        "/predict/batch", json={"images": digits.images.tolist(), "scale": "0-255"}
    ).json()
    raw = api.post(
        "/predict/batch",
        content=digits.images.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    ).json()
    for body in (as_json, raw):
        np.testing.assert_allclose(body["probabilities"], expected_probs, atol=1e-5)
        assert body["predicted"] == expected_probs.argmax(axis=1).tolist()
        assert len(set(body["ids"])) == len(digits)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_picture_upload_raw_and_multipart_with_explanation(api, digits, expected_probs):
    picture = np.kron(255 - digits.images[1], np.ones((10, 10), np.uint8))  # 280px, dark ink
    raw = api.post(
        "/predict?explain=true", content=_png(picture), headers={"Content-Type": "image/png"}
    )
    multipart = api.post("/predict", files={"file": ("digit.png", _png(picture), "image/png")})
    assert raw.status_code == multipart.status_code == 200, raw.text
    body = raw.json()
    assert body["predicted"] == multipart.json()["predicted"]
    seen = np.array(body["image"])
    assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0  # white on black
    saliency = np.array(body["saliency"])
    assert saliency.shape == (28, 28) and saliency.max() == pytest.approx(1.0)
    # an MNIST-style 28x28 upload without preprocessing is exactly the JSON prediction
    exact = api.post(
        "/predict?preprocess=false",
        content=_png(digits.images[1]),
        headers={"Content-Type": "image/png"},
    ).json()
    np.testing.assert_allclose(exact["probabilities"], expected_probs[1], atol=1e-5)


GOOD = [0.0] * 784
SMALL_BODY_LIMIT = 784 * 100


@pytest.fixture(scope="module")
def small_api(production_store, tmp_path_factory):
    """An app with tight limits (5 images per batch, ~78 kB bodies)."""
    settings = make_settings(
        production_store,
        tmp_path_factory.mktemp("small-predictions"),
        max_batch_images=5,
        max_body_bytes=SMALL_BODY_LIMIT,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"pixels": [0.0] * 783, "scale": "0-1"}}, 422, "784"),
        ({"json": {"pixels": [[0.0] * 28] * 27, "scale": "0-1"}}, 422, "28"),
        ({"json": {"pixels": GOOD}}, 422, "scale"),
        ({"json": {"pixels": GOOD, "scale": "0-100"}}, 422, "scale"),
        ({"json": {"pixels": [2.0] + GOOD[1:], "scale": "0-1"}}, 422, "[0, 1]"),
        ({"json": {"pixels": [-1.0] + GOOD[1:], "scale": "0-255"}}, 422, "[0, 255]"),
        ({"json": {"pixels": ["x"] + GOOD[1:], "scale": "0-1"}}, 422, "number"),
        ({"content": b'{"pixels": [NaN' + b", 0" * 783 + b'], "scale": "0-1"}'}, 422, "pixels"),
        ({"content": b'{"pixels": [1e999' + b", 0" * 783 + b'], "scale": "0-1"}'}, 422, "pixels"),
        ({"json": {"pixels": [1e300] + GOOD[1:], "scale": "0-255"}}, 422, "float32 range"),
        ({"json": {"pixels": [10**400] + GOOD[1:], "scale": "0-255"}}, 422, "float32 range"),
        ({"content": b"{not json"}, 422, "JSON"),
        ({"content": b""}, 422, "empty"),
        ({"content": b"\x89PNG garbage", "ctype": "image/png"}, 422, "decode"),
        ({"content": _png(np.zeros((40, 40), np.uint8)), "ctype": "image/png"}, 422, "blank"),
        ({"content": b"pixels", "ctype": "text/plain"}, 415, "Content-Type"),
        ({"files": {"other": ("x.png", b"1", "image/png")}}, 422, "'file'"),
    ],
)
def test_bad_single_inputs_get_a_4xx_naming_the_problem(api, kwargs, status, message):
    kwargs = dict(kwargs)
    headers = {"Content-Type": kwargs.pop("ctype", "application/json")}
    if "files" in kwargs:
        headers = {}
    response = api.post("/predict", headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"], response.json()


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"images": [], "scale": "0-1"}}, 422, "non-empty"),
        ({"json": {"images": [GOOD, [0.0] * 10], "scale": "0-1"}}, 422, "image 1"),
        (
            {"json": {"images": [GOOD, [-1e39] + GOOD[1:]], "scale": "0-1"}},
            422,
            "image 1 must be numbers within float32",
        ),
        ({"content": b"\x00" * 785, "ctype": "application/octet-stream"}, 422, "784-byte"),
        ({"content": b"", "ctype": "application/octet-stream"}, 422, "empty"),
        ({"content": b"\x00" * 784 * 6, "ctype": "application/octet-stream"}, 413, "exceeds"),
        ({"content": b"x", "ctype": "image/png"}, 415, "Content-Type"),
    ],
)
def test_bad_batches_get_a_4xx(small_api, kwargs, status, message):
    kwargs = dict(kwargs)
    headers = {"Content-Type": kwargs.pop("ctype", "application/json")}
    response = small_api.post("/predict/batch", headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"]), response.json()


def test_oversized_body_is_refused(small_api):
    too_big = small_api.post(
        "/predict/batch",
        content=b"\x00" * (SMALL_BODY_LIMIT + 784),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    limit = SMALL_BODY_LIMIT
    response = small_api.post(
        "/predict/batch",
        content=b"0" * 16,
        headers={"Content-Type": "application/json", "Content-Length": str(limit + 1)},
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_feedback_is_joined_into_the_prediction_log(api, digits):
    served = api.post("/predict", json={"pixels": digits.images[2].tolist(), "scale": "0-255"})
    prediction_id = served.json()["id"]
    recorded = api.post("/feedback", json={"id": prediction_id, "label": int(digits.labels[2])})
    assert recorded.status_code == 200 and recorded.json()["recorded"] is True
    assert api.post("/feedback", json={"id": "0" * 32, "label": 3}).status_code == 404
    assert api.post("/feedback", json={"id": prediction_id, "label": 10}).status_code == 422
    assert api.post("/feedback", json={"id": "nope", "label": 1}).status_code == 422

    service = api.app.state.service
    service.log.flush()
    window = read_prediction_log(service.settings.prediction_log_dir)
    row = list(window.ids).index(prediction_id)
    assert window.labels[row] == digits.labels[2]
    np.testing.assert_array_equal(window.images[row], digits.images[2])
    assert window.model_versions[row] == "1"
    np.testing.assert_allclose(window.probabilities[row], served.json()["probabilities"], rtol=1e-6)


def test_admin_reload_needs_the_token(api):
    assert api.post("/admin/reload").status_code == 401
    wrong = api.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = api.post("/admin/reload", headers={"Authorization": "Bearer test-admin-token"})
    assert ok.status_code == 200 and ok.json()["model"]["version"] == "1"


def test_metrics_expose_latency_classes_and_version(api, digits):
    api.post("/predict", json={"pixels": digits.images[3].tolist(), "scale": "0-255"})
    text = api.get("/metrics").text
    assert 'mnist_request_latency_seconds_bucket{endpoint="/predict"' in text
    assert "mnist_predictions_total{digit=" in text
    assert "mnist_model_version 1.0" in text
    assert 'mnist_model_info{name="mnist-classifier",source="registry",version="1"} 1.0' in text


def test_web_ui_is_served(api):
    page = api.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert api.get("/static/app.js").status_code == 200


def test_bfloat16_serving_agrees_with_float32(production_store, tmp_path, digits, expected_probs):
    """The fast precision must not change answers: same digit for (nearly) every image."""
    settings = make_settings(production_store, tmp_path / "log", precision="bfloat16")
    with TestClient(create_app(settings)) as client:
        body = client.post(
            "/predict/batch", json={"images": digits.images.tolist(), "scale": "0-255"}
        ).json()
        precision = client.get("/model").json()["precision"]
    agree = np.mean(np.array(body["predicted"]) == expected_probs.argmax(axis=1))
    assert agree >= 0.95, (precision, agree)
    np.testing.assert_allclose(body["probabilities"], expected_probs, atol=0.05)


def test_api_docs_are_served_from_local_files(api):
    """/docs and /redoc must work without internet: every asset comes from this server."""
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        html = api.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "http://" not in html.text and "https://" not in html.text, page
        for asset in assets:
            url = f"/static-docs/{asset}"
            assert url in html.text
            served = api.get(url)
            assert served.status_code == 200 and len(served.content) > 100_000, url
    schema = api.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")  # the bundled Swagger UI 5 renders 3.1
    errors = schema["paths"]["/predict"]["post"]["responses"]["413"]["content"]
    assert list(errors) == ["application/problem+json"]
