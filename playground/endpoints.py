"""OpenAI-compatible serving engines (vLLM, TGI, LMDeploy, ``transformers serve``, llama.cpp's server) as models.

An ``Endpoint`` is a base URL plus an optional model name and API key. ``endpoint_reply.stream_endpoint_reply`` speaks
``POST {base}/chat/completions`` with server-sent events and yields the same ``StreamEvent`` / ``ReplyStats``
objects as ``playground.engine.stream_reply``, so the Chat and Compare tabs, the ``/chat`` API and the serving
benchmark treat a served model like a local one. In the UI an endpoint is the model ``endpoint:<name>`` and its
variant is always ``served`` (the server decides the precision).

Everything is measured on the client: TTFT is request sent → first text chunk received (network and queueing
included), inter-token latencies are the gaps between text chunks, decode tok/s is (tokens − 1) ÷ (last chunk −
first chunk). The token count is the server's ``usage.completion_tokens`` when it sends one (requested with
``stream_options.include_usage``), else the number of text chunks; the stats' notes say which.

Only fields of the OpenAI API are sent (``max_tokens``, ``temperature``, ``top_p``, ``seed``): some servers
(``transformers serve``) reject anything else. ``top_k`` and ``repetition_penalty`` are not sent; extra fields a
server understands (vLLM's ``top_k``, ``min_tokens``, ``ignore_eos`` …) go in ``Endpoint.extra_body``.

The API key is never shown: it is left out of ``repr``, ``str`` and ``to_dict``, and any error text a server
sends back is scrubbed of it before it reaches a message.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import GenerationError, InvalidParameterError, ModelNotFoundError

PREFIX = "endpoint:"
VARIANT = "served"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,79}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONNECT_TIMEOUT_S = 10.0
MASK = "***"


class EndpointError(GenerationError):
    """An endpoint could not answer: unreachable, refused, wrong model, HTTP error, or a stream cut mid-way."""


def _normalize_url(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` (or any path) → the OpenAI base URL, without a slash."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameterError("an endpoint needs a URL, e.g. http://127.0.0.1:8000/v1")
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidParameterError(f"endpoint URL must start with http:// or https://, got {parts.scheme}://")
    if not parts.hostname:
        raise InvalidParameterError(f"endpoint URL {url!r} has no host")
    if parts.username or parts.password:
        raise InvalidParameterError("put the API key in key_env (or the key field), not in the endpoint URL")
    if parts.query or parts.fragment:
        raise InvalidParameterError("the endpoint URL must not have a query string or fragment: give the base "
                                    "URL, e.g. http://127.0.0.1:8000/v1")
    try:
        parts.port
    except ValueError:
        raise InvalidParameterError(f"endpoint URL {url!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass
class Endpoint:
    """An OpenAI-compatible server. ``name`` defaults to ``host:port``; ``model`` None: the server's first model
    (or none at all, for servers that serve one and accept requests without it)."""
    url: str
    model: str | None = None
    name: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    key_env: str | None = None          # read the key from this environment variable at request time
    timeout_s: float = 300.0            # longest wait for the next chunk (or the whole non-streamed reply)
    extra_body: dict = field(default_factory=dict)
    # added by a stranger on a shared app: public addresses only (checked before every call), no server text in
    # errors, bounded replies (``sharing.check_public_url``)
    public_only: bool = False
    _models: list | None = field(default=None, init=False, repr=False, compare=False)
    _no_stream_options: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.url = _normalize_url(self.url)
        if self.model is not None:
            self.model = str(self.model).strip() or None
        if self.name is None or not str(self.name).strip():
            self.name = urlsplit(self.url).netloc
        self.name = str(self.name).strip()
        if self.name.startswith(PREFIX):
            self.name = self.name[len(PREFIX):]
        if not NAME_RE.match(self.name):
            raise InvalidParameterError(
                f"endpoint name {self.name!r}: use letters, digits and . _ : @ + - (at most 80 characters)")
        if self.api_key is not None:
            if not isinstance(self.api_key, str):
                raise InvalidParameterError("the API key must be text")
            self.api_key = self.api_key.strip() or None
        if self.key_env is not None:
            self.key_env = str(self.key_env).strip() or None
            if self.key_env and not ENV_RE.match(self.key_env):
                raise InvalidParameterError(f"key_env must be an environment variable name, got {self.key_env!r}")
        if self.api_key and self.key_env:
            raise InvalidParameterError("give the API key either directly or through key_env, not both")
        try:
            self.timeout_s = float(self.timeout_s)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"timeout_s must be a number of seconds, got {self.timeout_s!r}") from None
        if not 0 < self.timeout_s <= 3600:
            raise InvalidParameterError(f"timeout_s must be in (0, 3600] seconds, got {self.timeout_s}")
        if not isinstance(self.extra_body, dict):
            raise InvalidParameterError("extra_body must be a JSON object")
        reserved = {"messages", "stream", "stream_options", "model"} & set(self.extra_body)
        if reserved:
            raise InvalidParameterError(f"extra_body must not set {', '.join(sorted(reserved))}")
        self.check_address()

    def check_address(self) -> None:
        """For ``public_only`` endpoints: the host must resolve to public addresses only, now (DNS may change)."""
        if self.public_only:
            from .sharing import check_public_url
            check_public_url(self.url)

    # -- identity ------------------------------------------------------------------------------------------------
    @property
    def choice(self) -> str:
        """The name in the model dropdowns and the /chat API: ``endpoint:<name>``."""
        return PREFIX + self.name

    @property
    def device(self) -> str:
        return f"endpoint:{self.url}"

    @property
    def label(self) -> str:
        return f"{self.choice} [{VARIANT}]"

    @property
    def key_source(self) -> str:
        if self.key_env:
            return f"from ${self.key_env}"
        return "set" if self.api_key else "none"

    def __str__(self) -> str:
        model = f", model {self.model}" if self.model else ""
        return f"{self.choice} → {self.url}{model} (API key: {self.key_source})"

    def to_dict(self) -> dict:
        """What may be stored or shown: never the key itself."""
        return {"name": self.name, "url": self.url, "model": self.model, "key_env": self.key_env,
                "api_key": MASK if self.api_key else None, "timeout_s": self.timeout_s,
                "extra_body": dict(self.extra_body)}

    # -- secrets -------------------------------------------------------------------------------------------------
    def key(self) -> str | None:
        if self.key_env:
            value = os.environ.get(self.key_env)
            if not value:
                raise EndpointError(f"{self.choice}: the environment variable {self.key_env} (its key_env) is "
                                    f"not set or empty")
            return value
        return self.api_key

    def redact(self, text: str) -> str:
        """``text`` with the key (if any) replaced by ***: server messages sometimes echo it."""
        text = str(text)
        try:
            key = self.key()
        except EndpointError:
            key = None
        if key and len(key) >= 4:
            text = text.replace(key, MASK)
        return text

    def headers(self) -> dict:
        h = {"Accept": "text/event-stream, application/json"}
        key = self.key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    # -- server facts --------------------------------------------------------------------------------------------
    def list_models(self, client=None, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
        """Model ids from ``GET {base}/models`` (raises EndpointError when unreachable or refused)."""
        import httpx
        self.check_address()
        own = client is None
        client = client or httpx.Client(timeout=timeout_s)
        try:
            with client.stream("GET", f"{self.url}/models", headers=self.headers(), timeout=timeout_s) as r:
                text = _read_bounded(r, MAX_MODELS_BYTES).decode("utf-8", "replace")
            if r.status_code >= 400:
                raise EndpointError(_http_message(self, r.status_code, _body_detail(text), "GET /models"))
            data = json.loads(text).get("data") or []
            return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]
        except httpx.HTTPError as exc:
            raise EndpointError(_transport_message(self, exc)) from None
        except (ValueError, AttributeError):
            raise EndpointError(f"{self.choice}: GET {self.url}/models did not return the OpenAI model list "
                                f"(is this an OpenAI-compatible server?)") from None
        finally:
            if own:
                client.close()

    def request_model(self, client=None) -> str | None:
        """The ``model`` field to send: the configured one, else the server's first listed model (asked once)."""
        if self.model:
            return self.model
        if self._models is None:
            try:
                self._models = self.list_models(client)
            except EndpointError:   # not remembered: the request itself will say what is wrong
                return None
        return self._models[0] if self._models else None

    def probe(self, timeout_s: float = 5.0) -> str:
        """A one-line reachability report (for the Models tab); never raises."""
        try:
            models = self.list_models(timeout_s=timeout_s)
        except EndpointError as exc:
            return f"⚠ {exc}"
        listed = ", ".join(models[:5]) + (" …" if len(models) > 5 else "") if models else "no models listed"
        hint = ""
        if self.model and models and self.model not in models:
            hint = f" — note: {self.model!r} is not among them"
        return f"✓ reachable ({listed}){hint}"


MAX_MODELS_BYTES = 1 << 20          # a model list is a few kB
MAX_REPLY_BYTES = 16 << 20          # a whole reply (streamed or not) from one server


def _read_bounded(resp, limit: int) -> bytes:
    """The response body, or EndpointError once it passes ``limit`` bytes (a server cannot flood the app)."""
    data = bytearray()
    for chunk in resp.iter_bytes():
        data += chunk
        if len(data) > limit:
            raise EndpointError(f"the server's answer is over {limit >> 20} MB: not an OpenAI-compatible reply")
    return bytes(data)


# ---- error messages ------------------------------------------------------------------------------------------------
def _body_detail(text: str) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return " ".join(str(text).split())[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if data.get("detail"):
            detail = data["detail"]
            return (detail if isinstance(detail, str) else json.dumps(detail))[:300]
        if data.get("message"):
            return str(data["message"])[:300]
    return " ".join(str(text).split())[:300]


def _http_message(ep: Endpoint, status: int, detail: str, what: str = "the request") -> str:
    if ep.public_only:      # a stranger's endpoint: the status code and a fixed reason, never the server's text
        return f"{ep.choice} answered HTTP {status} to {what}"
    where = f"{ep.choice} ({ep.url})"
    detail = ep.redact(detail) or "no details"
    low = detail.lower()
    if status in (401, 403):
        hint = "the server refused the API key: check the key (or its key_env variable)"
    elif status in (400, 404, 422) and ("model" in low or (ep.model and repr(ep.model).lower() in low)):
        hint = (f"check the model name (this endpoint sends model={ep.model!r}" if ep.model
                else "check the model name (this endpoint sends the server's first listed model") + \
               "; the server's GET /v1/models lists what it serves)"
    elif status == 404:
        hint = "the URL has no such route: the base URL should end where /chat/completions starts (usually /v1)"
    elif status == 429:
        hint = "the server is rate-limiting: slow down or lower the concurrency"
    elif status >= 500:
        hint = "the server failed: see its log"
    else:
        hint = "the server rejected the request"
    return f"{where} answered HTTP {status} to {what}: {detail} ({hint})"


def _transport_message(ep: Endpoint, exc: Exception) -> str:
    import httpx
    if ep.public_only:      # the same words for closed, filtered and non-HTTP ports
        return f"could not get an answer from {ep.choice}"
    where = f"{ep.choice} ({ep.url})"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"cannot reach {where}: no connection within {CONNECT_TIMEOUT_S:.0f} s (wrong host, or a firewall?)"
    if isinstance(exc, httpx.ConnectError):
        return (f"cannot reach {where}: {ep.redact(str(exc)) or 'connection refused'} (is the server running "
                f"and listening on that host and port?)")
    if isinstance(exc, httpx.ReadTimeout):
        return f"{where} sent nothing for {ep.timeout_s:.0f} s: the server is stuck or overloaded"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return f"{where} closed the connection: {ep.redact(str(exc)) or type(exc).__name__}"
    return f"{where}: {type(exc).__name__}: {ep.redact(str(exc))}"


def is_endpoint_name(name) -> bool:
    return isinstance(name, str) and name.strip().startswith(PREFIX)


class EndpointRegistry:
    """The endpoints the app knows, by name (thread-safe: the Models tab adds while chats read).

    A registry with a ``parent`` is one browser session's view: it sees the parent's endpoints (those given at
    launch: ``--endpoint``, ``--endpoints-file``) plus its own (added in that session's Models tab), and adds and
    removes only its own, so an endpoint and its API key entered by one user never reach another user."""

    def __init__(self, endpoints=(), parent: EndpointRegistry | None = None):
        self._eps: dict[str, Endpoint] = {}
        self._lock = threading.Lock()
        self.parent = parent
        for ep in endpoints:
            self.add(ep)

    @staticmethod
    def _key(name) -> str:
        key = (name or "").strip()
        return key[len(PREFIX):] if key.startswith(PREFIX) else key

    def add(self, ep: Endpoint) -> Endpoint:
        """Add, or replace the endpoint of the same name (a session's own one hides the parent's)."""
        with self._lock:
            self._eps[ep.name] = ep
        return ep

    def remove(self, name: str) -> bool:
        """Remove one of this registry's own endpoints (never the parent's)."""
        with self._lock:
            return self._eps.pop(self._key(name), None) is not None

    def owns(self, name: str) -> bool:
        with self._lock:
            return self._key(name) in self._eps

    def get(self, name: str) -> Endpoint:
        key = self._key(name)
        with self._lock:
            ep = self._eps.get(key)
        if ep is None and self.parent is not None and key in self.parent:
            return self.parent.get(key)
        if ep is None:
            listed = ", ".join(self.choices()) or "none yet: add one with --endpoint or in the Models tab"
            raise ModelNotFoundError(f"no endpoint named {key!r} (known endpoints: {listed})")
        return ep

    def all(self) -> list[Endpoint]:
        with self._lock:
            own = dict(self._eps)
        inherited = [ep for ep in self.parent.all() if ep.name not in own] if self.parent is not None else []
        return inherited + list(own.values())

    def choices(self) -> list[str]:
        return [ep.choice for ep in self.all()]

    def __len__(self) -> int:
        return len(self.all())

    def __contains__(self, name) -> bool:
        try:
            self.get(name)
            return True
        except ModelNotFoundError:
            return False


SPEC_KEYS = {"model", "name", "key_env", "timeout_s"}


def parse_endpoint_spec(spec: str) -> Endpoint:
    """``URL[,model=NAME][,name=NAME][,key_env=VAR][,timeout_s=S]`` (the ``--endpoint`` flag) → Endpoint.

    A key cannot be given here (command lines end up in shell histories and process lists): use key_env."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidParameterError("--endpoint needs a URL, e.g. --endpoint http://127.0.0.1:8000/v1,model=NAME")
    url, *opts = [p.strip() for p in spec.split(",")]
    kw: dict = {}
    for opt in opts:
        if not opt:
            continue
        key, sep, value = opt.partition("=")
        key = key.strip()
        if key in ("key", "api_key"):
            raise InvalidParameterError("--endpoint takes no API key (it would show in the process list): "
                                        "put it in an environment variable and pass key_env=VAR")
        if not sep or key not in SPEC_KEYS:
            raise InvalidParameterError(f"--endpoint option {opt.split('=')[0]!r}: expected one of "
                                        f"{', '.join(sorted(SPEC_KEYS))} as KEY=VALUE")
        kw[key] = value.strip()
    return Endpoint(url=url, **kw)


FILE_KEYS = SPEC_KEYS | {"url", "api_key", "extra_body"}


def load_endpoints_file(path: str | Path) -> list[Endpoint]:
    """A JSON file: a list of {"url", "model"?, "name"?, "key_env"?, "api_key"?, "timeout_s"?, "extra_body"?}
    (or {"endpoints": [...]})."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidParameterError(f"endpoints file {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidParameterError(f"endpoints file {p} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "endpoints" in data:
        data = data["endpoints"]
    if not isinstance(data, list):
        raise InvalidParameterError(f"endpoints file {p}: expected a list of endpoint objects")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "url" not in entry:
            raise InvalidParameterError(f"endpoints file {p}: entry {i} must be an object with a \"url\"")
        unknown = set(entry) - FILE_KEYS
        if unknown:
            raise InvalidParameterError(f"endpoints file {p}: entry {i} has unknown key(s) "
                                        f"{', '.join(sorted(unknown))} (allowed: {', '.join(sorted(FILE_KEYS))})")
        try:
            out.append(Endpoint(**entry))
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"endpoints file {p}: entry {i}: {exc}") from None
    return out


def describe_endpoint(ep: Endpoint) -> str:
    """The status line of a selected endpoint (Markdown)."""
    model = f" · model `{ep.model}`" if ep.model else " · model: the server's"
    return (f"↔ **{ep.choice}** → {ep.url}{model} · API key: {ep.key_source} · served remotely: TTFT and tok/s "
            f"are measured here, memory is the server's")
