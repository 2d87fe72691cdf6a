"""Errors of the HTTP API: one JSON shape for every refusal.

    {"error": "<what is wrong>", "field": "<where>", "value": "<what was there>"}

`field` and `value` are given where one field is at fault (`value` is null when it was
missing, and is never a secret such as a token). A message refused for several reasons
also lists them all under `problems`, each with its own field, value and message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.ledger.errors import DutyRefused, UnknownEntity

log = logging.getLogger("doseline.api")

MAX_VALUE_CHARS = 200  # an offending value is quoted up to this length


class Problem(BaseModel):
    field: str
    value: str | None = None
    message: str
    patient: str | None = None  # the patient's pseudonym, for a dose order's problem


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: str
    field: str | None = None
    value: str | None = None
    problems: list[Problem] | None = None


class ApiError(Exception):
    """A refused request: HTTP status, message, and the field and value at fault."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        field: str | None = None,
        value: object = None,
        problems: Sequence[Problem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field
        self.value = shown(value)
        self.problems = list(problems) if problems is not None else None
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return ErrorBody(
            error=self.error, field=self.field, value=self.value, problems=self.problems
        ).model_dump(exclude_none=True)


def shown(value: object) -> str | None:
    """A value as it is quoted in an error: text, clipped; an object or list by kind."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        text = type(value).__name__
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def error_response(
    status: int, error: str, *, field: str | None = None, value: object = None
) -> JSONResponse:
    return JSONResponse(
        ApiError(status, error, field=field, value=value).body(), status_code=status
    )


# Documented on every route that can give them (OpenAPI `responses`).
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "No token, or a token nobody holds (WWW-Authenticate: Bearer)",
        403: "The token's role is too low; the error names the role needed",
        404: "Not found; the error names what",
        409: "Refused in the current state; the error says why",
        413: "The body is too large",
        415: "Unsupported Content-Type",
        422: "Bad input; `field` and `value` name what was refused",
        503: "Needs a running controller (or the ledger is unreachable)",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


def _field(loc: Sequence[int | str]) -> str:
    """FastAPI's error location without its source (`query`, `body`, `path`)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "body", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "body"


def _validation_problems(exc: RequestValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # FastAPI's location is ("body", <offset>): the body is at fault, not a field.
            loc = err.get("loc", ())
            where = f" at position {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            reason = (err.get("ctx") or {}).get("error", "")
            message = f"not valid JSON{where}" + (f": {reason}" if reason else "")
            body = exc.body if isinstance(exc.body, str | bytes) else None
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            problems.append(Problem(field="body", value=shown(body), message=message))
            continue
        raw = err.get("input")
        missing = err.get("type") == "missing"
        value = None if missing or (isinstance(raw, dict) and not raw) else shown(raw)
        problems.append(Problem(field=_field(err.get("loc", ())), value=value, message=err["msg"]))
    return problems


def duty_refusal(exc: Exception) -> ApiError:
    """A refused stock-duty decision as an answer: an unknown product or record 404, a
    request the ledger's state refuses 409, a bad value 422; each names the field and
    the value the refusal names."""
    if isinstance(exc, UnknownEntity):
        return ApiError(404, str(exc), field=exc.field, value=exc.value)
    if isinstance(exc, DutyRefused):
        status = {"missing": 404, "conflict": 409}.get(exc.kind, 422)
        value = None if exc.value is None else str(exc.value)
        return ApiError(status, str(exc), field=exc.field, value=value)
    return ApiError(
        422, str(exc), field=getattr(exc, "field", None), value=getattr(exc, "value", None)
    )


def install(app: FastAPI) -> None:
    """Makes every error, FastAPI's own included, an `ErrorBody`."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = _validation_problems(exc)
        first = problems[0] if problems else Problem(field="body", message="invalid request")
        shown_value = "" if first.value is None else f" (value: {first.value!r})"
        error = ApiError(
            422,
            f"{first.field}: {first.message}{shown_value}",
            field=first.field,
            value=first.value,
            problems=problems if len(problems) > 1 else None,
        )
        return JSONResponse(error.body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = ApiError(
                404, f"no such route: {request.url.path}", field="path", value=request.url.path
            )
        elif exc.status_code == 405:
            error = ApiError(
                405,
                f"method {request.method} is not allowed on {request.url.path}",
                field="method",
                value=request.method,
            )
        elif exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode at all (JSON that is not UTF-8):
            # bad input like any other, so 422 naming the body and the bytes at fault.
            cause = exc.__cause__
            if isinstance(cause, UnicodeDecodeError):
                bad = cause.object[cause.start : cause.end].hex()
                error = ApiError(
                    422,
                    f"body: not UTF-8 text: byte(s) 0x{bad} at position {cause.start}",
                    field="body",
                    value=f"0x{bad}",
                )
            else:
                error = ApiError(422, f"body: {exc.detail}", field="body")
        else:
            error = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(
            error.body(), status_code=error.status, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only the type and the route's template are logged here: the message and the
        # path itself might quote the request (ids, control characters).
        route = getattr(request.scope.get("route"), "path", "(no route)")
        log.error("api: %s %s failed: %s", request.method, route, type(exc).__name__)
        return error_response(500, "internal error; the controller's log has the details")
