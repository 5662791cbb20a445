"""Registry fixtures: a private copy of the shared stand-in store per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(standin_store, tmp_path) -> Path:
    """A private copy of the template store (good + worse runs, nothing registered)."""
    return standin_store.copy_to(tmp_path / "store")
