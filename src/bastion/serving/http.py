"""Small HTTP pieces every part of the gateway shares: the error type, JSON responses, request ids."""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.responses import Response

JSON_TYPE = "application/json"
#: The methods the nginx/Envoy authorization endpoint answers (the gateway forwards any of them).
AUTHZ_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpError(Exception):
    """A refusal with its status code and one-line reason; the app turns it into ``{"error": reason}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, headers=headers, media_type=JSON_TYPE)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": one_line(message)}, status, headers)


def one_line(text: str, limit: int = 1000) -> str:
    return " ".join(str(text).split())[:limit]


def new_request_id() -> str:
    return secrets.token_hex(8)
