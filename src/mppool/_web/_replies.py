"""JSON in and out of the HTTP API: strict parsing, replies, and the error every handler raises."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_JSON_DEPTH = 32  # a task submission is a name, a few arguments and options


class HTTPError(Exception):
    """Raised by handlers to answer with a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def dumps(obj: Any) -> str:
    # NaN and infinities are not JSON; refusing them here surfaces a bug instead of sending
    # text that strict parsers (browsers' JSON.parse included) reject.
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps, headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return reply({"error": message}, status=status, headers=headers)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(obj: Any) -> int:
    """How deeply ``obj`` nests, counted without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            values = item.values() if isinstance(item, dict) else item
            stack.extend((v, level + 1) for v in values)
    return deepest


def load(raw: bytes) -> Any:
    """Parse a request body as strict JSON (no NaN or Infinity), at most MAX_JSON_DEPTH deep."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise HTTPError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"malformed JSON: {exc}") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise HTTPError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def jsonable(obj: Any) -> Any:
    """``dataclasses.asdict`` output with dict keys made strings (priorities as ``"10"``)."""
    if isinstance(obj, dict):
        return {(f"{k:g}" if isinstance(k, float) else str(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
