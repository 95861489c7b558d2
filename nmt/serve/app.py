"""The HTTP face of the service (FastAPI): the routes, the JSON errors, and the middleware that guards them.

    GET  /              the web page (nmt/serve/static, no CDN: it works offline)
    POST /v1/translate  sentences in, translations out (`TranslateRequest` -> `TranslateResponse`)
    GET  /v1/models     the models served, their languages, decoding defaults, size, dtype and device
    GET  /health        200 while the server serves
    GET  /metrics       Prometheus' text format (`nmt.serve.metrics`)
    GET  /docs          the OpenAPI documentation FastAPI builds from the same request models

Every refusal is `{"error": {"status": N, "message": "..."}}` with its status code; with an API key, every
/v1 route needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

import nmt
from nmt.serve.guards import BodyLimit, error_response, key_matches
from nmt.serve.metrics import Metrics, RequestMetrics
from nmt.serve.schema import ErrorResponse, ModelsResponse, TranslateRequest, TranslateResponse
from nmt.serve.service import Service, ServiceError
from nmt.tokens import MAX_LINE_SUBWORDS

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ENDPOINTS = ("/", "/v1/translate", "/v1/models", "/health", "/metrics")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 503, 504)}


def create_app(service: Service, metrics: Metrics | None = None, ready_message: str | None = None) -> FastAPI:
    """The app for `service`; its lifespan starts the model workers and, at shutdown, lets them finish what
    is queued. `ready_message` is logged once the workers run."""
    metrics = metrics or Metrics(ENDPOINTS)
    settings = service.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        if ready_message:
            log.info("%s", ready_message)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="nmt", version=nmt.__version__, lifespan=lifespan,
                  description="Recurrent neural machine translation; concurrent requests share their searches "
                  "(with beam search, a request's sentences join the running search at its next step).")
    app.state.service, app.state.metrics = service, metrics
    _add_routes(app, service, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts what the others refuse
    return app


def _add_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """The routes of the module docstring; with an API key, the /v1 ones check it first."""
    settings = service.settings

    async def require_key(request: Request) -> None:
        if settings.api_key is not None and not key_matches(request.headers.get("authorization"),
                                                              settings.api_key):
            raise ServiceError(401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                               {"WWW-Authenticate": "Bearer"})

    @app.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=[Depends(require_key)])
    async def translate(request: TranslateRequest) -> Response:
        """Translate a sentence or a list of them; the answer keeps the input's order."""
        answer = await service.translate(request)
        # Serialised here, once, by pydantic's own encoder: FastAPI would validate the model a second time.
        return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")

    @app.get("/v1/models", response_model=ModelsResponse, responses=ERRORS, dependencies=[Depends(require_key)])
    async def models() -> ModelsResponse:
        return ModelsResponse(models=[m.info() for m in service.models.values()], limits={
            "max_sentences": settings.max_sentences, "max_body_bytes": settings.max_body_bytes,
            "max_line_subwords": MAX_LINE_SUBWORDS}, glossaries=list(service.glossaries))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(service.models)}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> Response:
        return error_response(err.status, err.message, err.headers, **err.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> Response:
        problems = _problems(err.errors())
        message = "; ".join(f"{p['field']}: {p['message']}" if p["field"] else p["message"] for p in problems[:3])
        return error_response(422, message + ("; ..." if len(problems) > 3 else ""), problems=problems)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> Response:
        return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_: Request, err: Exception) -> Response:
        log.error("internal error", exc_info=err)
        return error_response(500, "internal error (the server's log has the details)")


def _problems(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Each validation error once as {"field": "beam", "message": ...}, saying what to send instead where
    pydantic's words would puzzle a client."""
    problems: list[dict[str, str]] = []
    for error in errors:
        problem = _problem(error)
        if problem not in problems:
            problems.append(problem)
    return problems


def _problem(error: dict[str, Any]) -> dict[str, str]:
    # pydantic names the branch of `str | list[str]` it tried: "text.str", "text.list[str].2".
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "str", "list[str]")]
    if loc == ["text"] and error.get("type") in ("string_type", "list_type"):
        return {"field": "text", "message": "must be a string or a list of strings"}
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        return {"field": "", "message": f"the body is not valid JSON ({reason} at character {''.join(loc)})"}
    if error.get("type") in ("model_attributes_type", "dict_type", "model_type") and not loc:
        return {"field": "", "message": "the body must be a JSON object (send content-type: application/json)"}
    if error.get("type") == "extra_forbidden":
        return {"field": ".".join(loc), "message": "unknown field (known: "
                + ", ".join(TranslateRequest.model_fields) + ")"}
    return {"field": ".".join(loc), "message": str(error.get("msg", "invalid")).removeprefix("Value error, ")}
