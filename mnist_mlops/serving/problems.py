"""One error shape for every route: RFC 9457 problem details (``application/problem+json``).

Every 4xx/5xx the app produces (its own checks, FastAPI's validation errors, Starlette's
404/405, the body-limit middleware, an unexpected exception) is rendered here, so a client
parses one shape: ``type``, ``title``, ``status``, ``detail``, ``instance`` and, for
validation errors, ``errors`` (where and what, never the offending input: a 20 MB invalid
body must not be echoed back).
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger(__name__)
# The path being served, for ``instance`` where no Request is at hand (set per request by
# BodyLimitMiddleware; contextvars follow the request into handlers and the threadpool).
current_path: ContextVar[str | None] = ContextVar("current_path", default=None)
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class HTTPProblem(Exception):
    """Raise to answer ``status`` with ``detail`` (and optional headers, e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}

    @property
    def message(self) -> str:  # the name older callers use
        return self.detail


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query or header, then the path")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(default="about:blank", description="problem type URI")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what is wrong with this request, in words")
    instance: str | None = Field(default=None, description="the request path")
    errors: list[FieldError] | None = Field(
        default=None, description="validation errors only: each problem and where it is"
    )


def clean(text: str, limit: int = 300) -> str:
    """``text`` without object reprs (``<_io.BytesIO object at 0x...>``), one line, capped."""
    text = _ADDRESS.sub("the upload", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem_body(
    status: int, detail: str, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance if instance is not None else current_path.get(),
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    payload = orjson.dumps(problem_body(status, detail, instance, **extra))
    return Response(payload, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> tuple[str, list[dict]]:
    errors, parts = [], []
    for error in exc.errors()[:20]:
        loc = [p for p in error.get("loc", ()) if isinstance(p, str | int)]
        msg = clean(error.get("msg", "invalid"), 200)
        if error.get("type") == "json_invalid":  # loc is (body, character offset)
            reason = (error.get("ctx") or {}).get("error", "")
            loc, msg = loc[:1], clean(f"invalid JSON: {reason}" if reason else "invalid JSON")
        errors.append({"loc": loc, "msg": msg, "type": str(error.get("type", "invalid"))})
        where = ".".join(str(p) for p in loc[1:] or loc) or "body"
        if f"{where}: {msg}" not in parts:
            parts.append(f"{where}: {msg}")
    more = f" (+{len(parts) - 4} more)" if len(parts) > 4 else ""
    return "; ".join(parts[:4]) + more, errors


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error as problem+json and document it that way in the OpenAPI schema."""

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> Response:
        return problem_response(exc.status, exc.detail, request.url.path, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        detail, errors = _validation_errors(exc)
        return problem_response(422, detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, clean(detail), request.url.path, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        _log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return problem_response(500, "internal error (logged on the server)", request.url.path)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_openapi(original_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response documented as ``application/problem+json``: routes declare their
    error models (Problem or a subclass) and FastAPI's automatic 422 becomes a Problem."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema(ref_template=_REF))
    for name, model in (("FieldError", FieldError),):
        components.setdefault(name, model.model_json_schema(ref_template=_REF))
    components["Problem"] = _inline_defs(components["Problem"], components)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if not (code == "default" or str(code)[0] in "45"):
                    continue
                content = response.setdefault("content", {})
                current = content.pop("application/json", {}).get("schema")
                if current is None or current.get("$ref", "").endswith(
                    ("/HTTPValidationError", "/ErrorResponse")
                ):
                    current = problem_ref
                content[PROBLEM_JSON] = {"schema": current}
    for legacy in ("HTTPValidationError", "ValidationError"):
        if not _referenced(schema, legacy):
            components.pop(legacy, None)
    return schema


_REF = "#/components/schemas/{model}"


def _inline_defs(model_schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    for name, definition in model_schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    return model_schema


def _referenced(schema: dict[str, Any], name: str) -> bool:
    return f'"#/components/schemas/{name}"' in orjson.dumps(schema.get("paths", {})).decode()
