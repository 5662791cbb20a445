"""Model lifecycle over real HTTP (uvicorn on 127.0.0.1): not-ready, fallback, hot promotion."""

from __future__ import annotations

import threading
import time

import httpx
from model_standins import client_for
from serving_helpers import (
    ADMIN_TOKEN,
    free_port,
    get_json,
    live_server,
    make_settings,
    promote,
    wait_until,
)

from mnist_mlops.data.splits import load_split
from mnist_mlops.tracking.registry import production_history


def test_no_model_means_live_but_not_ready_until_one_is_promoted(
    fresh_store, standin_store, synthetic_processed_dir, tmp_path
):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    settings = make_settings(empty, tmp_path / "log", experiment_name="nothing-here")
    with live_server(settings) as url:
        assert get_json(f"{url}/health") == (200, {"status": "ok"})
        status, body = get_json(f"{url}/ready")
        assert status == 503 and body["ready"] is False and body["detail"]
        refused = httpx.post(f"{url}/predict", json={"pixels": [0] * 784, "scale": "0-255"})
        assert refused.status_code == 503 and "no model" in refused.json()["detail"]
        assert httpx.get(f"{url}/model").status_code == 503

    # Finished runs with loadable models, none through the gate: still not ready (issue 10.6:
    # the newest run is never served just because it exists). Once one is promoted, admin
    # reload makes the running app ready on that version.
    settings = make_settings(fresh_store, tmp_path / "log2")
    with live_server(settings) as url:
        status, body = get_json(f"{url}/ready")
        assert status == 503 and body["ready"] is False
        assert "ever passed the promotion gate" in body["detail"]
        version = promote(fresh_store, standin_store.good.run_id, synthetic_processed_dir)
        reloaded = httpx.post(
            f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        assert reloaded.status_code == 200
        assert reloaded.json()["model"]["version"] == version


def test_unreachable_registry_serves_nothing_ungated(production_store, standin_store, tmp_path):
    """The registry is down: no gated version can be found, so the app stays not ready instead
    of serving the newest run (which never went through the gate)."""
    dead_registry = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(production_store, tmp_path / "log", registry_uri=dead_registry)
    started = time.monotonic()
    with live_server(settings) as url:
        assert time.monotonic() - started < 30  # fails fast, no minutes of retries
        status, body = get_json(f"{url}/ready")
        assert status == 503 and body["ready"] is False
        assert "registry alias unavailable" in body["detail"]
        assert "nothing is served" in body["detail"]
        served = httpx.post(f"{url}/predict", json={"pixels": [0] * 784, "scale": "0-255"})
        assert served.status_code == 503


def test_missing_alias_without_a_gated_history_is_not_ready(fresh_store, tmp_path):
    settings = make_settings(fresh_store, tmp_path / "log", model_alias="no-such-alias")
    with live_server(settings) as url:
        status, body = get_json(f"{url}/ready")
        assert status == 503 and "registry alias unavailable" in body["detail"]


def test_broken_production_falls_back_to_the_last_gated_champion(
    fresh_store, standin_store, synthetic_processed_dir, tmp_path
):
    """Two versions held production through the gate (v1 bad, then v2 good); then production
    is pointed (out of band) at a version whose model cannot load. The server falls back to
    v2 -- the last version that held production -- not to the newest run, and says so."""
    old = promote(fresh_store, standin_store.bad.run_id, synthetic_processed_dir)
    last_gated = promote(fresh_store, standin_store.good.run_id, synthetic_processed_dir)
    client = client_for(fresh_store)
    assert production_history(client, "mnist-classifier") == [last_gated, old]
    broken = client.create_model_version(
        "mnist-classifier", source=str(tmp_path / "no-such-model"), run_id=None
    ).version
    client.set_registered_model_alias("mnist-classifier", "production", str(broken))
    settings = make_settings(fresh_store, tmp_path / "log")
    with live_server(settings) as url:
        status, body = get_json(f"{url}/ready")
        assert status == 200, body
        model = body["model"]
        assert model["source"] == "fallback" and model["version"] == last_gated
        assert model["run_id"] == standin_store.good.run_id
        assert f"could not load version {broken}" in body["detail"]
        assert f"serving v{last_gated}" in body["detail"]
        served = httpx.post(f"{url}/predict", json={"pixels": [0] * 784, "scale": "0-255"})
        assert served.status_code == 200 and served.json()["model"]["version"] == last_gated


def test_promotion_during_a_burst_fails_no_request(
    fresh_store, standin_store, synthetic_processed_dir, tmp_path
):
    """Serve the worse model, promote the better one mid-burst: every request succeeds and
    the served version changes without a restart (picked up by alias polling)."""
    old = promote(fresh_store, standin_store.bad.run_id, synthetic_processed_dir)
    digits = load_split(synthetic_processed_dir / "test", limit=16)
    settings = make_settings(fresh_store, tmp_path / "log", poll_interval_s=0.2)
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def client_loop(url: str, seed: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            k = seed
            while not stop.is_set():
                body = {"pixels": digits.images[k % len(digits)].tolist(), "scale": "0-255"}
                try:
                    response = client.post("/predict", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    versions.append(response.json()["model"]["version"])
                k += 1

    with live_server(settings) as url:
        threads = [threading.Thread(target=client_loop, args=(url, s)) for s in range(8)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(versions) > 50)
        new = promote(fresh_store, standin_store.good.run_id, synthetic_processed_dir)
        assert wait_until(lambda: versions and versions[-1] == new, timeout=30)
        count_at_switch = len(versions)
        assert wait_until(lambda: len(versions) > count_at_switch + 50)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert {old, new} <= set(versions)
    first_new = versions.index(new)
    assert set(versions[first_new + 16 :]) == {new}  # once swapped, it stays swapped
