"""The FastAPI app: ``uvicorn mnist_mlops.serving.app:app`` or ``create_app(settings)``.

Hot path design: the single-image endpoint is ``async`` and only parses (pydantic-core, in
Rust) and awaits the inference thread's future, so the event loop never runs the model;
responses are serialised with orjson. Large batches are parsed, predicted and serialised on a
worker thread. Bad input of every kind becomes a 4xx with a message (see ``inputs``), and
every error, whatever its route or source, is an RFC 9457 problem document (``problems``).
Request bodies are limited per route and Content-Type while they stream in (``limits``).
"""

from __future__ import annotations

import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline.core import _STATIC_PATH as OFFLINE_DOCS_DIR
from starlette.concurrency import run_in_threadpool

from mnist_mlops.serving import metrics
from mnist_mlops.serving.engine import ModelNotReadyError, saliency
from mnist_mlops.serving.inputs import (
    JSON_TYPES,
    MULTIPART,
    OCTET_STREAM,
    PNG_TYPES,
    InputError,
    media_type,
    parse_json_batch,
    parse_raw_batch,
    parse_single,
    read_body,
)
from mnist_mlops.serving.limits import BodyLimit, BodyLimitMiddleware, HeavySlots
from mnist_mlops.serving.problems import (
    HTTPProblem,
    install_problem_handlers,
    problem_response,
)
from mnist_mlops.serving.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelInfo,
    NotReady,
    PredictRequest,
    PredictResponse,
    Readiness,
)
from mnist_mlops.serving.service import Prediction, PredictionService
from mnist_mlops.serving.settings import ServingSettings, settings_from_environment

STATIC_DIR = Path(__file__).parent / "static"


def _error_responses(descriptions: dict[int, str]) -> dict[int, dict[str, Any]]:
    """OpenAPI ``responses=`` for error codes: every error body is an ``ErrorResponse``."""
    return {
        code: {"model": ErrorResponse, "description": text} for code, text in descriptions.items()
    }


_ERRORS = _error_responses(
    {
        400: "Malformed request",
        408: "The body did not arrive within body_read_timeout_s (connection closed)",
        413: "Body, picture or batch too large (the message names the limit)",
        415: "Unsupported Content-Type",
        422: "Invalid input (the message names the problem)",
        503: "No model loaded yet, or busy decoding (Retry-After)",
    }
)
# Both predict routes parse a body and need a model, so they share every error response.
_PREDICT_ERRORS = {k: _ERRORS[k] for k in (400, 408, 413, 415, 422, 503)}
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
    if status >= 400:  # errors always leave as problem documents
        return problem_response(status, str(payload.get("detail", "")))
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _model_ref(prediction: Prediction) -> dict:
    model = prediction.model
    return {"name": model.name, "version": model.version, "source": model.source}


def _readiness(service: PredictionService) -> Response:
    """200 with the model when one is served, else a 503 problem saying why (the last load
    error, a short reason: the full exception is in the server log, never in the answer)."""
    model = service.model
    if model is None:
        detail = service.watcher.last_error or "no model found in the registry or runs"
        headers = {"Retry-After": "5"}
        return problem_response(503, detail, "/ready", headers, ready=False, model=None)
    return _json({"ready": True, "model": model.describe(), "detail": service.watcher.last_error})


def _body_limits(settings: ServingSettings):
    """The body limit of each (route, Content-Type): sized for what the body is for."""
    ceiling = settings.max_body_bytes
    raw = BodyLimit(ceiling)
    image = BodyLimit(min(settings.max_image_bytes, ceiling))
    as_raw = (
        "send large batches as raw uint8 to /predict/batch "
        "(Content-Type: application/octet-stream, n*784 bytes)"
    )
    json_single = BodyLimit(min(settings.max_json_bytes, ceiling), as_raw)
    json_batch = BodyLimit(min(settings.max_batch_json_bytes, ceiling), as_raw)
    other = BodyLimit(min(settings.max_other_body_bytes, ceiling))

    def limit_for(method: str, path: str, media: str) -> BodyLimit:
        if path == "/predict":
            if media in JSON_TYPES:
                return json_single
            if media in PNG_TYPES or media == MULTIPART:
                return image
        elif path == "/predict/batch":
            if media == OCTET_STREAM:
                return raw
            if media in JSON_TYPES:
                return json_batch
        return other

    return limit_for


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
        description="Serves the registry's production model; see /docs. Errors are RFC 9457 "
        "problem documents (application/problem+json).",
        lifespan=lifespan,
        docs_url=None,  # served below from local files (the defaults load from a CDN)
        redoc_url=None,
    )
    app.state.service = service
    slots = HeavySlots(settings.max_concurrent_heavy, settings.heavy_wait_s)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/static-docs", StaticFiles(directory=OFFLINE_DOCS_DIR), name="static-docs")
    install_problem_handlers(app)

    @app.exception_handler(ModelNotReadyError)
    async def _not_ready(request: Request, exc: ModelNotReadyError) -> Response:
        return problem_response(503, str(exc), request.url.path, {"Retry-After": "5"})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/static-docs/swagger-ui-bundle.js",
            swagger_css_url="/static-docs/swagger-ui.css",
            swagger_favicon_url="/static-docs/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url="/static-docs/redoc.standalone.js",
            redoc_favicon_url="/static-docs/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health", response_model=Health, summary="Liveness: the process is up")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": NotReady, "description": "No model loaded (and why)"}},
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
        image = await parse_single(request, preprocess, slots, settings.max_image_pixels)
        prediction = await service.predict(image)
        payload = {
            "id": prediction.ids[0],
            "feedback_token": service.feedback.signer.sign(prediction.ids[0]),
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
                "feedback_tokens": service.feedback.signer.sign_many(prediction.ids),
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
        body = await read_body(request)
        async with slots.slot("batches"):
            answer = await run_in_threadpool(_batch, body, kind)
        return Response(answer, media_type="application/json")

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=_error_responses(
            {
                401: "No feedback_token, and feedback_require_token is set",
                403: "feedback_token does not match the prediction id",
                404: "Unknown prediction id (untrusted feedback only)",
                409: "This prediction already has feedback (one label per id: the first wins)",
                429: "Too much feedback from this client (per-IP token bucket)",
                503: "The label could not be stored (disk full)",
            }
        ),
        summary="Record the true label of a served prediction (with its feedback_token: trusted)",
    )
    def feedback(body: FeedbackRequest, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        result = service.feedback.give(body.id, body.label, body.feedback_token, client)
        metrics.FEEDBACK.labels(outcome=result.outcome).inc()
        if result.status != 200:
            raise InputError(result.status, result.detail)
        return _json(
            {"id": body.id, "label": body.label, "recorded": True, "trusted": result.trusted}
        )

    @app.post(
        "/admin/reload",
        response_model=Readiness,
        responses=_error_responses(
            {401: "Missing or wrong token", 403: "Admin endpoints disabled"}
        ),
        summary="Re-resolve the production alias now (Authorization: Bearer <token>)",
    )
    def admin_reload(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not settings.admin_token:
            raise HTTPProblem(403, "admin endpoints are disabled (no admin token set)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), settings.admin_token.encode()
        ):
            raise HTTPProblem(
                401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"}
            )
        service.reload()
        return _readiness(service)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        metrics.LOG_DROPPED.set(service.log.dropped)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    routes = ["/predict", "/predict/batch", "/feedback", "/health", "/ready", "/model", "/metrics"]
    # inner: limits on every body; outer: timing and 4xx/5xx counts include its answers
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=_body_limits(settings),
        read_timeout_s=settings.body_read_timeout_s,
        # one largest body always fits when the worker is otherwise idle
        inflight_budget=max(settings.max_inflight_body_bytes, settings.max_body_bytes),
    )
    app.add_middleware(_LatencyMiddleware, routes=routes)
    return app


def __getattr__(name: str):
    """``app`` is built on first access, so importing this module has no side effects."""
    if name == "app":
        application = create_app(settings_from_environment())
        globals()["app"] = application
        return application
    raise AttributeError(name)
