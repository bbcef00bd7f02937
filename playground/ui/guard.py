"""A guard in front of the app's JSON endpoints: hostile request bodies get a 4xx with one line, never a 500.

Gradio hands a request body to the event handlers as Python's ``json`` module parses it, which accepts
``NaN``/``Infinity`` and lone UTF-16 surrogates (``"\\ud800"``). Neither can be answered: a lone surrogate in a
message ends the streamed reply mid-way (the server cannot encode its own answer), a non-finite number fails
deep inside the handlers. A ``fn_index`` that names no event is a KeyError inside Gradio (HTTP 500), and JSON
nested thousands deep overflows the parser's recursion. This ASGI middleware reads the body of every JSON
POST first and answers such requests itself with HTTP 422 (413 for bodies over ``MAX_BODY_BYTES``) and a
``{"detail": "..."}`` that says what is wrong. Everything else passes through untouched.

With a ``SharingPolicy`` in shared mode it also stands in front of strangers (see ``playground/sharing.py``): a
POST without a valid login gets 401 before a byte of its body is read; bodies are limited to the policy's size
(by their Content-Length, and while they are read); the JSON checks run on a worker thread, never in the event
loop; failed logins are rate-limited per client address (HTTP 429); and each user may have at most
``queued_per_user`` requests waiting or running in the queue.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from http.cookies import SimpleCookie

import anyio

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

    def __init__(self, app, blocks=None, max_body_bytes: int | None = None, policy=None):
        self.app = app
        self.blocks = blocks
        self.policy = policy
        self.max_body_bytes = max_body_bytes or (policy.max_body_bytes if policy is not None else MAX_BODY_BYTES)
        self._failed_logins: dict[str, deque] = defaultdict(deque)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        shared = self.policy is not None and self.policy.shared
        path = scope.get("path", "").rstrip("/")
        if shared and path.endswith("/login"):
            await self._login(scope, receive, send)
            return
        user = None
        if shared and getattr(self.blocks, "auth", None):
            user = self._user(scope)
            if user is None:
                await _reply(send, 401, "sign in first")
                return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _reply(send, 413, f"the request body is over {_size(self.max_body_bytes)}")
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
            elif shared:                                 # a stranger's oversized body: stop reading now
                break
            else:
                chunks = []                              # drained, not kept: the answer is 413 once it is read
            more = message.get("more_body", False)
        if size > self.max_body_bytes:
            await _reply(send, 413, f"the request body is over {_size(self.max_body_bytes)}")
            return
        body = b"".join(chunks)
        fn_ids = set(getattr(self.blocks, "fns", {}) or {}) if self.blocks is not None else None
        reason = await anyio.to_thread.run_sync(check_body, body, fn_ids) if len(body) > 4096 else \
            check_body(body, fn_ids)
        if reason is not None:
            await _reply(send, 422, reason)
            return
        if shared and path.endswith("/queue/join") and self.policy.queued_per_user:
            who = user or _session_hash(body)
            if who and self._queued(who, by_user=user is not None) >= self.policy.queued_per_user:
                await _reply(send, 429, f"you already have {self.policy.queued_per_user} requests waiting or "
                                        f"running: wait for one to finish")
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _user(self, scope) -> str | None:
        """The logged-in user of this request (Gradio's login cookie), or None."""
        server = getattr(self.blocks, "server_app", None)
        tokens, cookie_id = getattr(server, "tokens", None), getattr(server, "cookie_id", None)
        if not tokens or cookie_id is None:
            return None
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                jar = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is simply no login
                    return None
                for key in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
                    if key in jar and jar[key].value in tokens:
                        return tokens[jar[key].value]
        return None

    def _queued(self, who: str, by_user: bool) -> int:
        """Requests of this user (or session) waiting in Gradio's queue or running."""
        queue = getattr(self.blocks, "_queue", None)
        if queue is None:
            return 0
        events = [e for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)]
        events += [e for job in list(queue.active_jobs) if job for e in job]
        return sum(1 for e in events if (e.username if by_user else e.session_hash) == who)

    async def _login(self, scope, receive, send):
        """Gradio's /login, with at most ``login_failures`` failed attempts per client address per window."""
        address = (scope.get("client") or ("?",))[0]
        window, limit = self.policy.login_window_s, self.policy.login_failures
        failures = self._failed_logins[address]
        now = time.monotonic()
        while failures and now - failures[0] > window:
            failures.popleft()
        if limit and len(failures) >= limit:
            wait = window - (now - failures[0])
            await _reply(send, 429, f"too many failed logins from this address: try again in {wait:.0f} s")
            return
        declared = _content_length(scope)
        if declared is not None and declared > 64 * 1024:
            await _reply(send, 413, "a login is a user name and a password")
            return

        async def watch(message):
            if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
                failures.append(time.monotonic())
            await send(message)

        await self.app(scope, receive, watch)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _session_hash(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("session_hash") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _size(nbytes: int) -> str:
    return f"{nbytes // 2 ** 20} MB"


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
