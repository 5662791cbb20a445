"""The drawing UI in real headless Debian chromium (Playwright with the system executable)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serving_helpers import live_server, make_settings

from mnist_mlops.predictions import read_prediction_log

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "outputs" / "test-artifacts"


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI (.ci/run installs Debian chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")


def test_draw_predict_and_give_feedback(production_store, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    log_dir = tmp_path / "log"
    with live_server(make_settings(production_store, log_dir)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 620})
            page.goto(url + "/")
            page.wait_for_function(
                "document.getElementById('model-line').textContent.includes('v1')"
            )

            # Draw a "7": a horizontal bar and a diagonal stroke, with real mouse events.
            box = page.locator("#pad").bounding_box()
            x0, y0 = box["x"], box["y"]
            page.mouse.move(x0 + 70, y0 + 60)
            page.mouse.down()
            for x, y in [(140, 60), (210, 60), (170, 140), (130, 230)]:
                page.mouse.move(x0 + x, y0 + y, steps=8)
            page.mouse.up()

            page.click("#predict")
            page.wait_for_function("document.getElementById('digit').textContent !== '–'")
            digit = page.text_content("#digit")
            assert digit is not None and digit.strip().isdigit()
            widths = page.eval_on_selector_all(
                "#bars .fill", "els => els.map(e => parseFloat(e.style.width))"
            )
            assert len(widths) == 10 and abs(sum(widths) - 100) < 1.5
            assert max(widths) == widths[int(digit)]

            page.click("#labels button[data-label='7']")
            page.wait_for_function("document.getElementById('thanks').textContent.includes('7')")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-ui.png"), full_page=True)
        finally:
            browser.close()

    window = read_prediction_log(log_dir)
    assert len(window) == 1 and window.labels[0] == 7  # the drawing and its label were logged
    assert window.images[0].max() == 255 and window.images[0][0].max() == 0  # MNIST-style input


def test_api_docs_render_offline_in_a_real_browser(production_store, tmp_path):
    """Swagger UI renders every operation with all requests kept on the server itself (any
    other host is refused, as on a machine without internet)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with (
        live_server(make_settings(production_store, tmp_path / "log")) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            outside: list[str] = []

            def keep_local(route) -> None:
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", keep_local)
            page.goto(url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.eval_on_selector_all(
                ".opblock-summary-path", "els => els.map(e => e.textContent.trim())"
            )
            assert {"/predict", "/predict/batch", "/feedback", "/ready"} <= set(paths)
            assert outside == []
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
        finally:
            browser.close()
