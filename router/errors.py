"""HTTP errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "internal_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """A request that ends with an error response; the message says what to fix."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation(e: ValidationError) -> APIError:
    """The first problem of a request body, naming the field (param) and what was wrong."""
    err = e.errors(include_url=False)[0]
    kind = err.get("type", "")
    if kind in ("json_invalid", "json_type"):
        return bad_request(f"the body is not valid JSON: {err.get('msg', '')}",
                           code="invalid_json")
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int) or p >= 0]
    # union branches add the type tried as a location part (e.g. "str", "list[int]"): drop it
    path = ".".join(p for p in loc if not _TYPE_PART.match(p))
    value = err.get("input")
    shown = "" if kind == "missing" else f" (got {_short(value)})"
    msg = f"{path}: {err.get('msg', 'invalid value')}{shown}" if path else err.get("msg", "")
    return bad_request(msg, param=path or None, code=kind or None)


_TYPE_PART = re.compile(r"^(str|int|float|bool|bytes|none|list\[.*\]|dict\[.*\]|"
                        r"function-\w+|nullable\[.*\]|constrained-\w+|json-or-python\[.*\])$")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
