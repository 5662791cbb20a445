"""Serving fixtures: stores with stand-in models and a TestClient on the good one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_helpers import make_settings, promote

from mnist_mlops.serving.app import create_app


@pytest.fixture(scope="session")
def production_store(standin_store, synthetic_processed_dir, tmp_path_factory) -> Path:
    """A store whose production alias points at the good stand-in (read-only for tests)."""
    store = standin_store.copy_to(tmp_path_factory.mktemp("production") / "store")
    promote(store, standin_store.good.run_id, synthetic_processed_dir)
    return store


@pytest.fixture
def fresh_store(standin_store, tmp_path) -> Path:
    """A private store with the runs logged but nothing registered."""
    return standin_store.copy_to(tmp_path / "store")


@pytest.fixture(scope="session")
def api(production_store, tmp_path_factory) -> Iterator[TestClient]:
    """TestClient on an app serving the good stand-in (lifespan runs: model loaded)."""
    log_dir = tmp_path_factory.mktemp("predictions")
    app = create_app(make_settings(production_store, log_dir))
    with TestClient(app) as client:
        client.log_dir = log_dir
        yield client
