"""The FastAPI app: ``uvicorn mnist_mlops.serving.app:app`` or ``create_app(settings)``.

Hot path design: the single-image endpoint is ``async`` and only parses (pydantic-core, in
Rust) and awaits the inference thread's future, so the event loop never runs the model;
responses are serialised with orjson. Large batches are parsed, predicted and serialised on a
worker thread. Bad input of every kind becomes a 4xx with a message (see ``inputs``).
"""

from __future__ import annotations

import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from mnist_mlops.serving import metrics
from mnist_mlops.serving.engine import ModelNotReadyError, saliency
from mnist_mlops.serving.inputs import (
    JSON_TYPES,
    OCTET_STREAM,
    InputError,
    media_type,
    parse_json_batch,
    parse_raw_batch,
    parse_single,
    read_body,
)
from mnist_mlops.serving.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    Readiness,
)
from mnist_mlops.serving.service import Prediction, PredictionService
from mnist_mlops.serving.settings import ServingSettings, settings_from_environment

STATIC_DIR = Path(__file__).parent / "static"
_ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed request",
        413: "Body or batch too large",
        415: "Unsupported Content-Type",
        422: "Invalid input (the message names the problem)",
        503: "No model loaded yet",
    }.items()
}
# Both predict routes parse a body and need a model, so they share every error response.
_PREDICT_ERRORS = {k: _ERRORS[k] for k in (400, 413, 415, 422, 503)}
_IMAGE_UPLOAD = {"schema": {"type": "string", "format": "binary"}}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "image/png": _IMAGE_UPLOAD,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchRequest.model_json_schema()},
            OCTET_STREAM: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "n*784 uint8 pixels (0-255), row-major, no header",
                }
            },
        },
    }
}


def _json(payload: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _model_ref(prediction: Prediction) -> dict:
    model = prediction.model
    return {"name": model.name, "version": model.version, "source": model.source}


def _readiness(service: PredictionService) -> Response:
    """200 with the model when one is served, else 503 saying why (the last load error)."""
    model = service.model
    if model is None:
        detail = service.watcher.last_error or "no model found in the registry or runs"
        return _json({"ready": False, "model": None, "detail": detail}, status=503)
    return _json({"ready": True, "model": model.describe(), "detail": service.watcher.last_error})


class _LatencyMiddleware:
    """Pure ASGI timing (cheaper than BaseHTTPMiddleware): latency per route, 4xx/5xx counts."""

    def __init__(self, app, routes: list[str]) -> None:
        self.app = app
        self._timers = {r: metrics.REQUEST_LATENCY.labels(endpoint=r) for r in routes}
        self._other = metrics.REQUEST_LATENCY.labels(endpoint="other")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._timers.get(scope["path"], self._other).observe(time.perf_counter() - start)
            if status >= 400:
                metrics.REJECTED.labels(status=str(status)).inc()


def create_app(settings: ServingSettings) -> FastAPI:
    """Build the app; the model is loaded in the lifespan, not at import."""
    service = PredictionService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="MNIST classifier",
        version="1.0",
        description="Serves the registry's production model; see /docs.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(ModelNotReadyError)
    async def _not_ready(_: Request, exc: ModelNotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health", response_model=Health, summary="Liveness: the process is up")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "No model loaded"}},
        summary="Readiness: a model is loaded and serving",
    )
    async def ready() -> Response:
        return _readiness(service)

    @app.get("/model", response_model=ModelInfo, responses={503: _ERRORS[503]})
    async def model_info() -> Response:
        model = service.model
        if model is None:
            raise ModelNotReadyError("no model is loaded yet")
        return _json(model.describe())

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_PREDICT_ERRORS,
        openapi_extra=_PREDICT_BODY,
        summary="Classify one image: JSON pixels (784 or 28x28, declared scale) or a picture",
    )
    async def predict(
        request: Request,
        explain: Annotated[
            bool, Query(description="also return the 28x28 input and a saliency map")
        ] = False,
        preprocess: Annotated[
            bool, Query(description="pictures only: apply MNIST's 20x20 fit + centring")
        ] = True,
    ) -> Response:
        image = await parse_single(request, settings.max_body_bytes, preprocess)
        prediction = await service.predict(image)
        payload = {
            "id": prediction.ids[0],
            "predicted": int(prediction.predicted[0]),
            "probabilities": prediction.probabilities[0].tolist(),
            "model": _model_ref(prediction),
        }
        if explain:
            grad = await run_in_threadpool(saliency, prediction.model, image[0])
            payload["image"] = np.rint(image[0] * 255).astype(np.uint8).tolist()
            payload["saliency"] = np.round(grad, 3).tolist()
        return _json(payload)

    def _batch(body: bytes, kind: str) -> bytes:
        if kind == OCTET_STREAM:
            images = parse_raw_batch(body, settings.max_batch_images)
        else:
            images = parse_json_batch(body, settings.max_batch_images)
        prediction = service.predict_blocking(images)
        return orjson.dumps(
            {
                "ids": prediction.ids,
                "predicted": prediction.predicted,
                "probabilities": prediction.probabilities,
                "model": _model_ref(prediction),
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses=_PREDICT_ERRORS,
        openapi_extra=_BATCH_BODY,
        summary="Classify many images: JSON list (declared scale) or raw uint8 bytes",
    )
    async def predict_batch(request: Request) -> Response:
        kind = media_type(request)
        if kind not in (*JSON_TYPES, OCTET_STREAM):
            raise InputError(415, f"unsupported Content-Type {kind or '(none)'!r} for a batch")
        if service.model is None:
            raise ModelNotReadyError("no model is loaded yet")
        body = await read_body(request, settings.max_body_bytes)
        return Response(await run_in_threadpool(_batch, body, kind), media_type="application/json")

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={404: {"model": ErrorResponse, "description": "Unknown prediction id"}},
        summary="Record the true label of a served prediction",
    )
    def feedback(body: FeedbackRequest) -> Response:
        if not service.knows(body.id):
            return _json({"detail": f"unknown prediction id {body.id}"}, status=404)
        service.record_feedback(body.id, body.label)
        return _json({"id": body.id, "label": body.label, "recorded": True})

    @app.post(
        "/admin/reload",
        response_model=Readiness,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or wrong token"},
            403: {"model": ErrorResponse, "description": "Admin endpoints disabled"},
        },
        summary="Re-resolve the production alias now (Authorization: Bearer <token>)",
    )
    def admin_reload(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not settings.admin_token:
            return _json({"detail": "admin endpoints are disabled (no admin token set)"}, 403)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), settings.admin_token.encode()
        ):
            return _json({"detail": "missing or wrong admin token"}, status=401)
        service.reload()
        return _readiness(service)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        metrics.LOG_DROPPED.set(service.log.dropped)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    routes = ["/predict", "/predict/batch", "/feedback", "/health", "/ready", "/model", "/metrics"]
    app.add_middleware(_LatencyMiddleware, routes=routes)
    return app


def __getattr__(name: str):
    """``app`` is built on first access, so importing this module has no side effects."""
    if name == "app":
        application = create_app(settings_from_environment())
        globals()["app"] = application
        return application
    raise AttributeError(name)
