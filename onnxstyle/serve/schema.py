"""What the API says about itself in /openapi.json: the response bodies, the multipart body of
``POST /v1/jobs`` and the error statuses of every route.

The routes answer with plain ``JSONResponse``s (the shapes of ``JobRecord.public`` and
``app.error``); these models only *declare* those shapes. They forbid extra fields, so a field
added on one side and not the other is caught by the schema fuzz test (tests/test_serve_schema.py),
which checks every answer of a running server against this schema, not by a client.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .intake import RemoteSettings
from .settings import ServeConfig

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class ErrorBody(BaseModel):
    """Every refusal and failure: one line, never a traceback nor a server path."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="what is wrong, in one line, naming the part of the request at fault")


class JobView(BaseModel):
    """A job as ``GET /v1/jobs/{job_id}`` shows it (``JobRecord.public``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="a random UUID", json_schema_extra={"format": "uuid"})
    status: JobStatus
    step: int = Field(description="evaluations done, over all stages")
    iterations: int = Field(description="evaluations planned, over all stages")
    # null until the first evaluation, and for a value that is not finite (JSON has no inf/NaN).
    loss: Optional[float]
    terms: dict[str, Optional[float]]
    stage: int
    stages: int
    elapsed: float = Field(description="seconds of computing")
    eta: Optional[float] = Field(description="seconds left, while running")
    width: int = Field(description="of the result, px")
    height: int
    created: float = Field(description="Unix time")
    started: Optional[float]
    finished: Optional[float]
    wait: Optional[float] = Field(description="seconds from submission to start")
    settings: dict[str, Any] = Field(description="the run settings the job runs with, defaults filled in")
    preview: Optional[str] = Field(description="URL of the latest preview JPEG")
    result: Optional[str] = Field(description="URL of the result PNG, once done")
    error: Optional[str] = Field(None, description="why it failed or was cancelled")
    warning: Optional[str] = Field(None, description="done, but stopped early by numerical faults")
    cancelling: Optional[bool] = Field(None, description="DELETE of a running job: it stops at its next evaluation")


class Deleted(BaseModel):
    """``DELETE`` of a finished job: it and its files are gone."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: Literal["deleted"]


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]
    workers: int = Field(description="warm workers")
    queued: int
    running: int


# Why each status is given; a route declares the ones it can answer with.
_ERRORS = {
    400: "malformed request: multipart that does not parse, settings that are not JSON or UTF-8",
    401: "missing or wrong bearer token",
    404: "no such job (or not a job id)",
    408: "the request body did not arrive in time (--body-timeout)",
    409: "the job has no such image (yet, or any more)",
    413: "request body, settings or image over this server's limits",
    415: "not multipart/form-data, or an upload that is not an image",
    422: "a request that cannot be run (settings, sizes, memory)",
    429: "the queue is full; retry after the Retry-After seconds",
}


def errors(config: ServeConfig, *statuses: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses (401 too where a token is required)."""
    codes = sorted({*statuses, *((401,) if auth and config.token is not None else ())})
    out: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}
    if 429 in out:
        out[429]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    if 401 in out:
        out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def binary(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


def job_request_body(config: ServeConfig) -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/jobs``: the route parses the multipart body itself (under
    the upload limit, one part at a time), so FastAPI is told its shape rather than given it."""
    settings = settings_schema(config)
    image = {"type": "string", "format": "binary"}
    schema = {
        "type": "object",
        "required": ["content", "style"],
        "properties": {
            "content": {**image, "description": "the photo"},
            "style": {"type": "array", "items": image, "minItems": 1, "maxItems": config.max_styles,
                      "description": "one or more style images"},
            "settings": settings,
        },
        "additionalProperties": False,
    }
    encoding = {"content": {"contentType": "image/*"}, "style": {"contentType": "image/*"},
                "settings": {"contentType": "application/json"}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}}}}


def settings_schema(config: ServeConfig) -> dict[str, Any]:
    """RemoteSettings' JSON schema with this server's limits and the names RunSettings knows,
    so that a client (or a fuzzer) learns them from the schema rather than from 422s."""
    schema = RemoteSettings.model_json_schema()
    schema.pop("title", None)
    schema["description"] = (
        "JSON text: the CLI's stylize options, all optional (the export's preset fills in the rest); "
        f"at most {config.max_evaluations} evaluations over all stages"
    )
    props = schema["properties"]
    side = {"type": "integer", "minimum": 32, "maximum": config.max_size}
    evaluations = {"type": "integer", "minimum": 1, "maximum": config.max_evaluations}
    _narrow(props["size"], side)
    _narrow(props["iterations"], evaluations)
    _narrow(props["scales"], {"type": "array", "items": side, "description": "rising stage sizes; the last is the output's"})
    _narrow(props["scale_iterations"], {"type": "array", "items": evaluations})
    for prop in props.values():
        prop.pop("title", None)
    return schema


def _narrow(prop: dict[str, Any], value: dict[str, Any]) -> None:
    """Replace the non-null branch of an Optional field's anyOf."""
    prop["anyOf"] = [value, {"type": "null"}]


def without_fastapi_422(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI declares a 422 of its own shape on every route with a parameter; here a path
    parameter is any string (no 422 can come of it), and a 422 that can come is declared
    with our ErrorBody. Its shape, never sent, goes from the schema."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            schema = op.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del op["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(name, None)
    return doc


class ProgressData(BaseModel):
    """What a ``queued``, ``running`` or ``progress`` event carries (events.event_data); the
    outcome (``done``, ``failed``, ``cancelled``) carries the whole JobView."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    step: int
    iterations: int
    loss: Optional[float]
    terms: dict[str, Optional[float]]
    elapsed: float
    eta: Optional[float]
    stage: int
    stages: int
    preview: Optional[str]


def events_response() -> dict[str, Any]:
    """The event stream, one schema per event (OpenAPI 3.2's ``itemSchema``, which FastAPI
    writes for its own SSE routes; ``schema`` too, for tools that know only that)."""
    data = ProgressData.model_json_schema()
    data.pop("title", None)
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string", "enum": ["queued", "running", "progress", "done", "failed", "cancelled"]},
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "send it back as Last-Event-ID to resume"},
            "retry": {"type": "integer", "minimum": 0},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [data, {"$ref": "#/components/schemas/JobView"}]}},
        },
    }
    return {"description": "Server-Sent Events until the job ends (Last-Event-ID resumes)",
            "content": {"text/event-stream": {"itemSchema": event}}}
