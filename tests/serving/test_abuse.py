"""Fault injection and abuse over real HTTP (uvicorn + httptools, as in production).

Every limit must hold for every framing (Content-Length, chunked, multipart inside chunked),
every bad input must get a 4xx problem document (never a 5xx, never a hang), and a broken
store at start-up must leave the app live and not ready until it is fixed. Bodies are sent
over raw sockets where an HTTP client would hide what the server does mid-body.
"""

from __future__ import annotations

import asyncio
import io
import resource
import shutil
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_helpers import (
    ADMIN_TOKEN,
    chunked,
    live_server,
    make_settings,
    promote,
    raw_exchange,
    wait_until,
)

from mnist_mlops.data.splits import load_split
from mnist_mlops.serving.limits import HeavySlots
from mnist_mlops.serving.problems import HTTPProblem

KIB, MIB = 1024, 1024**2
LIMITS = {
    "max_body_bytes": 2 * MIB,  # raw uint8 batches, and the ceiling
    "max_image_bytes": 512 * KIB,
    "max_json_bytes": 64 * KIB,
    "max_batch_json_bytes": 256 * KIB,
    "max_other_body_bytes": 4 * KIB,
    "max_inflight_body_bytes": 3 * MIB,
    "body_read_timeout_s": 1.0,
}
# What an attacker tries to push; the server must stop reading long before. Loopback socket
# buffers can absorb a few MiB the server never reads, hence the margin.
ATTEMPT = 64 * MIB
SOCKET_SLACK = 12 * MIB
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


@pytest.fixture(scope="module")
def url(production_store, tmp_path_factory):
    settings = make_settings(production_store, tmp_path_factory.mktemp("abuse-log"), **LIMITS)
    with live_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def digit(synthetic_processed_dir) -> np.ndarray:
    return load_split(synthetic_processed_dir / "test", limit=1).images[0]


def _head(path: str, content_type: str, *, length: int | None = None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n"
    )


def _zeros(total: int, piece: int = 64 * KIB):
    for _ in range(total // piece):
        yield b"\x00" * piece


def _assert_problem(answer_status: int, body: dict, status: int, path: str) -> None:
    assert answer_status == status, body
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status and body["instance"] == path
    assert isinstance(body["detail"], str) and body["detail"]


# --- one size policy for every route and framing -------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "limit"),
    [
        ("/predict/batch", "application/octet-stream", LIMITS["max_body_bytes"]),
        ("/predict/batch", "application/json", LIMITS["max_batch_json_bytes"]),
        ("/predict", "image/png", LIMITS["max_image_bytes"]),
        ("/predict", "application/json", LIMITS["max_json_bytes"]),
        ("/feedback", "application/json", LIMITS["max_other_body_bytes"]),
    ],
)
def test_chunked_body_over_the_limit_gets_413_and_is_not_read_further(
    url, path, content_type, limit
):
    answer = raw_exchange(url, _head(path, content_type), chunked(_zeros(ATTEMPT)))
    _assert_problem(answer.status, answer.json(), 413, path)
    assert str(limit) in answer.json()["detail"]
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers.get("connection") == "close"
    assert answer.sent < limit + SOCKET_SLACK, answer.sent  # stopped near the limit


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [("/admin/reload", "application/json", 401), ("/predict", "text/plain", 415)],
)
def test_route_answering_without_reading_closes_instead_of_draining(
    url, path, content_type, status
):
    answer = raw_exchange(url, _head(path, content_type), chunked(_zeros(ATTEMPT)))
    _assert_problem(answer.status, answer.json(), status, path)
    assert answer.headers.get("connection") == "close"
    assert answer.sent < SOCKET_SLACK


def test_multipart_sent_chunked_without_length_is_cut_off(url):
    """The issue's bypass: multipart + chunked skipped the check and 400 MiB were spooled."""
    boundary = "b0undary"
    opening = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    head = _head("/predict", f"multipart/form-data; boundary={boundary}")
    answer = raw_exchange(url, head, chunked([opening, *_zeros(ATTEMPT)]))
    _assert_problem(answer.status, answer.json(), 413, "/predict")
    assert answer.sent < LIMITS["max_image_bytes"] + SOCKET_SLACK


def test_declared_length_over_the_limit_is_refused_before_the_body(url):
    head = _head("/predict/batch", "application/octet-stream", length=400 * MIB)
    answer = raw_exchange(url, head, _zeros(ATTEMPT), pause_s=0.2)
    _assert_problem(answer.status, answer.json(), 413, "/predict/batch")
    assert answer.sent == 0  # answered before the first body byte left


def test_json_batch_over_its_limit_points_to_raw_uint8(url):
    images = np.zeros((120, 784), np.uint8).tolist()  # ~190 kB of "0, " is within the limit
    ok = httpx.post(f"{url}/predict/batch", json={"images": images, "scale": "0-255"})
    assert ok.status_code == 200, ok.text
    big = httpx.post(f"{url}/predict/batch", json={"images": images * 2, "scale": "0-255"})
    assert big.status_code == 413
    assert "application/octet-stream" in big.json()["detail"]


def test_bodies_in_flight_are_bounded_per_worker(url):
    """Two uploads each within the route limit, together over the worker's budget: the
    second is refused with 503 + Retry-After instead of both being held in memory."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    first = socket.create_connection((host, int(port)))
    try:
        first.sendall(_head("/predict/batch", "application/octet-stream", length=2 * MIB).encode())
        first.sendall(b"\x00" * (int(1.8 * MIB) // 784 * 784))  # held: waiting for the rest
        time.sleep(0.3)
        head = _head("/predict/batch", "application/octet-stream", length=784 * 2600)
        second = raw_exchange(url, head, _zeros(784 * 2600, 784 * 100))
        _assert_problem(second.status, second.json(), 503, "/predict/batch")
        assert second.headers.get("retry-after") == "1"
    finally:
        first.close()


# --- slow bodies ----------------------------------------------------------------------------


def test_body_that_stops_arriving_gets_408_and_the_connection_closes(url):
    head = _head("/predict", "application/json", length=100)
    answer = raw_exchange(url, head, [b'{"pixels": '])  # 11 of 100 bytes, then silence
    _assert_problem(answer.status, answer.json(), 408, "/predict")
    assert answer.headers.get("connection") == "close"
    assert 0.9 <= answer.seconds < 5


def test_body_dripped_slowly_hits_the_whole_body_deadline(url):
    """A byte every 0.2 s never idles long, but the body must be complete within the time."""
    head = _head("/feedback", "application/json")
    answer = raw_exchange(url, head, chunked([b"{"] * 100), pause_s=0.2)
    _assert_problem(answer.status, answer.json(), 408, "/feedback")
    assert answer.seconds < 5


# --- pictures: refused from the header, decoded in bounded memory --------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _blank_png(width: int, height: int, channels: int = 1) -> bytes:
    """A valid, all-zero PNG (grey or RGBA), tiny for its size. The zlib stream is built from
    one compressed block of rows repeated (a full flush makes each repeat byte-identical), so a
    400-megapixel bomb takes a fraction of a second to make instead of deflating 400 MB."""
    colour = {1: 0, 4: 6}[channels]
    rows = next(r for r in (64, 50, 32, 16, 8, 4, 2, 1) if height % r == 0)
    block = (b"\x00" * (1 + width * channels)) * rows
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; zlib framing added below
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeat = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(height // rows):
        checksum = zlib.adler32(block, checksum)
    data = b"\x78\xda" + first + repeat * (height // rows - 1) + deflate.flush()
    data += struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # baseline SOF0: length, precision, height, width
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _post_image(url: str, data: bytes, content_type: str = "image/png") -> httpx.Response:
    return httpx.post(
        f"{url}/predict", content=data, headers={"Content-Type": content_type}, timeout=30
    )


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return _blank_png(20_000, 20_000)  # 400 MP: ~390 kB on the wire, 400 MB decoded


@pytest.mark.parametrize(
    ("make", "content_type", "said"),
    [
        (lambda bomb: bomb, "image/png", "400000000 pixels"),  # 20000x20000
        (lambda _: _jpeg_declaring(60_000, 60_000), "image/jpeg", "3600000000 pixels"),
        (lambda _: _blank_png(5000, 4000), "image/png", "20000000 pixels"),  # under Pillow's
    ],
)
def test_decompression_bombs_get_413_without_decoding(url, png_bomb, make, content_type, said):
    started = time.monotonic()
    response = _post_image(url, make(png_bomb), content_type)
    _assert_problem(response.status_code, response.json(), 413, "/predict")
    assert response.headers["content-type"] == "application/problem+json"
    assert said in response.json()["detail"]
    assert "the limit is 16777216 pixels" in response.json()["detail"]
    assert time.monotonic() - started < 3  # refused from the header, not decoded


def test_bomb_is_a_valid_png():
    """The bomb above is a real image (so the refusal is not just a parse error)."""
    small = _blank_png(300, 200, channels=4)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (300, 200) and image.mode == "RGBA"
        assert np.asarray(image).max() == 0


def test_large_transparent_png_is_decoded_in_bounded_time_and_memory(url):
    """4096x4096 RGBA, 65 kB: it used to cost ~600 MB and 2.6 s; now it is reduced in uint8."""
    data = _blank_png(4096, 4096, channels=4)
    assert len(data) < 200_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, this process
    started = time.monotonic()
    response = _post_image(url, data)
    elapsed = time.monotonic() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    _assert_problem(response.status_code, response.json(), 422, "/predict")
    assert "blank" in response.json()["detail"]  # fully transparent: no ink
    assert elapsed < 5 and grown_mib < 300, (elapsed, grown_mib)


def test_sixteen_bit_png_keeps_its_grey_levels(url, digit):
    """A 16-bit greyscale PNG is scaled to 8 bits, not clipped into a binary image."""
    picture = np.kron(digit, np.ones((4, 4), np.uint8))  # 112 px, mid-tone anti-aliasing
    assert ((picture > 0) & (picture < 255)).sum() > 0
    results = {}
    for name, array in (("8-bit", picture), ("16-bit", picture.astype(np.uint16) * 257)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        response = httpx.post(
            f"{url}/predict?explain=true",
            content=buffer.getvalue(),
            headers={"Content-Type": "image/png"},
        )
        assert response.status_code == 200, response.text
        results[name] = response.json()
    seen = np.array(results["16-bit"]["image"])
    assert ((seen > 0) & (seen < 255)).sum() > 20  # grey levels survived
    assert np.abs(seen - np.array(results["8-bit"]["image"])).max() <= 1
    assert results["16-bit"]["predicted"] == results["8-bit"]["predicted"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature, then garbage
        _blank_png(64, 64)[:60],  # truncated inside IDAT
        b"GIF89a" + b"\xff" * 30,
        b"%PDF-1.4 not an image",
    ],
)
def test_corrupt_pictures_get_a_clean_422(url, data):
    response = _post_image(url, data)
    _assert_problem(response.status_code, response.json(), 422, "/predict")
    detail = response.json()["detail"]
    assert "decode" in detail
    assert "0x" not in detail and "BytesIO" not in detail and "<" not in detail


def test_heavy_slots_queue_briefly_then_answer_503_with_retry_after():
    async def scenario() -> None:
        slots = HeavySlots(capacity=1, wait_s=0.05)
        async with slots.slot("image decodes"):
            with pytest.raises(HTTPProblem) as refused:
                async with slots.slot("image decodes"):
                    pass
            assert refused.value.status == 503
            assert refused.value.headers == {"Retry-After": "1"}
        waited = asyncio.create_task(_hold(slots))  # queues, then runs once the slot frees
        async with slots.slot("image decodes"):
            await asyncio.sleep(0.01)
        await waited

    async def _hold(slots: HeavySlots) -> None:
        async with slots.slot("image decodes"):
            await asyncio.sleep(0)

    asyncio.run(scenario())


# --- contract: JSON types, one error shape ---------------------------------------------------

PIXELS = [0] * 784


@pytest.mark.parametrize(
    ("path", "body", "said"),
    [
        ("/predict", {"pixels": ["1"] + PIXELS[1:], "scale": "0-255"}, "number"),
        ("/predict", {"pixels": [True] + PIXELS[1:], "scale": "0-255"}, "true"),
        ("/predict", {"pixels": [None] + PIXELS[1:], "scale": "0-255"}, "null"),
        ("/predict", {"pixels": [["7"] * 28] * 28, "scale": "0-255"}, "number"),
        ("/predict", {"pixels": PIXELS, "scale": 255}, "scale"),
        ("/predict/batch", {"images": [PIXELS, [False] + PIXELS[1:]], "scale": "0-1"}, "image 1"),
        ("/predict/batch", {"images": ["0" * 784], "scale": "0-1"}, "image 0"),
        ("/feedback", {"id": "0" * 32, "label": "7"}, "label"),
        ("/feedback", {"id": "0" * 32, "label": True}, "label"),
        ("/feedback", {"id": "0" * 32, "label": 7.0}, "label"),
        ("/feedback", {"id": 12345, "label": 7}, "id"),
    ],
)
def test_strings_and_booleans_are_not_numbers(url, path, body, said):
    response = httpx.post(f"{url}{path}", json=body)
    _assert_problem(response.status_code, response.json(), 422, path)
    assert said in response.json()["detail"], response.json()


def test_invalid_feedback_body_is_not_echoed_back(url):
    junk = '{"id": "' + "x" * 3000 + '", "label": [' + "1," * 200 + "1]}"
    response = httpx.post(
        f"{url}/feedback", content=junk, headers={"Content-Type": "application/json"}
    )
    _assert_problem(response.status_code, response.json(), 422, "/feedback")
    assert len(response.content) < 1500 and "xxxxxxxx" not in response.text
    assert all("input" not in error for error in response.json()["errors"])


def test_every_error_route_answers_a_problem_document(url):
    bearer = {"Authorization": "Bearer wrong"}
    as_json = {"Content-Type": "application/json"}
    png, gif = {"Content-Type": "image/png"}, {"Content-Type": "image/gif"}
    cases = [
        ("GET", "/no-such-route", {}, 404),
        ("GET", "/predict", {}, 405),
        ("POST", "/predict", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415),
        ("POST", "/predict", {"json": {"pixels": [0] * 3, "scale": "0-1"}}, 422),
        ("POST", "/predict", {"content": b"{", "headers": as_json}, 422),
        ("POST", "/predict", {"content": b"\x89PNG", "headers": png}, 422),
        ("POST", "/predict/batch", {"content": b"x", "headers": gif}, 415),
        ("POST", "/predict/batch", {"json": {"images": []}}, 422),
        ("POST", "/feedback", {"json": {"id": "nope", "label": 1}}, 422),
        ("POST", "/feedback", {"content": b"{", "headers": as_json}, 422),
        ("POST", "/admin/reload", {"headers": bearer}, 401),
    ]
    with httpx.Client(base_url=url, timeout=10) as client:
        for method, path, kwargs, status in cases:
            response = client.request(method, path, **kwargs)
            assert response.headers["content-type"] == "application/problem+json", (path, status)
            _assert_problem(response.status_code, response.json(), status, path)
        assert client.post("/admin/reload", headers=bearer).headers["www-authenticate"]
        allowed = client.get("/predict").headers.get("allow", "")
        assert "POST" in allowed


# --- start-up on a broken store ----------------------------------------------------------------


def test_corrupt_store_at_startup_is_live_not_ready_until_fixed(production_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(production_store, store, symlinks=True)
    good = (store / "mlflow.db").read_bytes()
    (store / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8192)  # garbage pages
    settings = make_settings(store, tmp_path / "log", poll_interval_s=0.2)
    with live_server(settings) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 503
        body = ready.json()
        _assert_problem(503, body, 503, "/ready")
        assert body["ready"] is False and "tracking store" in body["detail"]
        assert not any(word in body["detail"] for word in ("SELECT", "SQL:", "sqlite3", "0x"))
        predict = httpx.post(f"{base}/predict", json={"pixels": PIXELS, "scale": "0-255"})
        _assert_problem(predict.status_code, predict.json(), 503, "/predict")

        (store / "mlflow.db").write_bytes(good)  # the operator restores the store
        assert wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, timeout=30)
        ready = httpx.get(f"{base}/ready").json()
        assert ready["model"]["source"] == "registry" and ready["detail"] is None


def test_stale_alias_error_clears_once_the_alias_is_set(
    fresh_store, standin_store, synthetic_processed_dir, tmp_path
):
    settings = make_settings(fresh_store, tmp_path / "log", poll_interval_s=0.2)
    with live_server(settings) as base:
        first = httpx.get(f"{base}/ready").json()
        # nothing passed the gate yet: not ready (an ungated run is never served; H3, issue 10.6)
        assert first["ready"] is False and "alias" in first["detail"]
        promote(fresh_store, standin_store.good.run_id, synthetic_processed_dir)
        assert wait_until(
            lambda: (
                (httpx.get(f"{base}/ready").json().get("model") or {}).get("source") == "registry"
            ),
            timeout=30,
        )
        assert wait_until(lambda: httpx.get(f"{base}/ready").json()["detail"] is None, timeout=5)
        reloaded = httpx.post(
            f"{base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert reloaded.status_code == 200 and reloaded.json()["detail"] is None
