"""A guard in front of the app's JSON endpoints: hostile request bodies get a 4xx with one line, never a 500.

Gradio hands a request body to the event handlers as Python's ``json`` module parses it, which accepts
``NaN``/``Infinity`` and lone UTF-16 surrogates (``"\\ud800"``). Neither can be answered: a lone surrogate in a
message ends the streamed reply mid-way (the server cannot encode its own answer), a non-finite number fails
deep inside the handlers. A ``fn_index`` that names no event is a KeyError inside Gradio (HTTP 500), and JSON
nested thousands deep overflows the parser's recursion. This ASGI middleware reads the body of every JSON
POST first and answers such requests itself with HTTP 422 (413 for bodies over ``MAX_BODY_BYTES``) and a
``{"detail": "..."}`` that says what is wrong. Everything else passes through untouched.
"""
from __future__ import annotations

import json

MAX_BODY_BYTES = 32 * 1024 * 1024   # a 1 MB message is fine (even as \u-escapes); far beyond that is abuse
MAX_DEPTH = 64                       # no request of this app nests deeper than ~6


class RejectedRequest(ValueError):
    pass


def _no_constants(name: str):
    raise RejectedRequest(f"{name} is not a number a request may carry: send finite numbers only")


def check_body(body: bytes, fn_ids=None) -> str | None:
    """The reason to refuse ``body`` (a JSON request body), or None when it may pass."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the request body is not valid UTF-8 (byte {exc.start})"
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RejectedRequest as exc:
        return str(exc)
    except RecursionError:
        return f"the request is nested too deeply (more than {MAX_DEPTH} levels)"
    except ValueError:
        return None          # not JSON at all: the framework answers that with its own 422
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the request is nested too deeply (more than {MAX_DEPTH} levels)"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"the request contains text that is not valid Unicode (a lone surrogate "
                        f"U+{ord(value[exc.start]):04X}): send UTF-8 text")
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    if fn_ids is not None and isinstance(data, dict) and "fn_index" in data:
        fn = data["fn_index"]
        if fn is not None and (isinstance(fn, bool) or not isinstance(fn, int) or fn not in fn_ids):
            return f"fn_index {fn!r} names no event of this app"
    return None


class RequestGuard:
    """ASGI middleware: ``app.launch(app_kwargs={"middleware": [Middleware(RequestGuard, blocks=app)]})``."""

    def __init__(self, app, blocks=None, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.blocks = blocks
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":      # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
            else:
                chunks = []                              # drained, not kept: the answer is 413 once it is read
            more = message.get("more_body", False)
        if size > self.max_body_bytes:
            await _reply(send, 413, f"the request body is over {self.max_body_bytes // 2 ** 20} MB")
            return
        body = b"".join(chunks)
        fn_ids = set(getattr(self.blocks, "fns", {}) or {}) if self.blocks is not None else None
        reason = check_body(body, fn_ids)
        if reason is not None:
            await _reply(send, 422, reason)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _is_json(scope) -> bool:
    """JSON, or no content type at all (FastAPI parses such bodies as JSON too)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True


async def _reply(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail, "error": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
