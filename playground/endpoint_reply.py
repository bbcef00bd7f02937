"""A reply from an OpenAI-compatible endpoint (``playground.endpoints.Endpoint``), streamed: ``POST
{base}/chat/completions`` with server-sent events, read into the same ``StreamEvent`` / ``ReplyStats`` objects as
``playground.engine.stream_reply`` yields, so the Chat and Compare tabs, the ``/chat`` API and the serving benchmark
treat a served model like a local one. What is measured and how: ``playground.endpoints``' docstring.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from .endpoints import (CONNECT_TIMEOUT_S, MAX_MODELS_BYTES, MAX_REPLY_BYTES, VARIANT, Endpoint, EndpointError,
                        _body_detail, _http_message, _read_bounded, _transport_message)
from .engine import GenerationParams, ReplyStats, StreamEvent
from .errors import InvalidParameterError


@dataclass
class EndpointReplyStats(ReplyStats):
    """ReplyStats of a served reply: memory is the server's business, so the badge shows the endpoint instead."""
    endpoint: str = ""
    token_count: str = ""          # "usage" (the server's count) or "chunks" (text chunks received)
    http_status: int = 0

    def badge(self) -> str:
        tokens = f"{self.new_tokens} tokens" + ("" if self.token_count == "usage" else " (chunks)")
        return (f"TTFT {self.ttft_s * 1000:.0f} ms · {self.decode_tok_s:.1f} tok/s · {tokens} · "
                f"{self.endpoint} (client-side) · {self.variant}")


def build_body(ep: Endpoint, messages: list[dict], system: str | None, params: GenerationParams, stream: bool,
               client=None) -> dict:
    conv = ([{"role": "system", "content": system}] if system and system.strip() else []) + \
        [{"role": m["role"], "content": str(m["content"])} for m in messages]
    body: dict = {"messages": conv, "max_tokens": params.max_new_tokens, "stream": stream}
    model = ep.request_model(client)
    if model:
        body["model"] = model
    if params.sampling:
        body["temperature"] = params.temperature
        body["top_p"] = params.top_p
    else:
        body["temperature"] = 0.0
    if params.seed is not None:
        body["seed"] = int(params.seed)
    if stream and not ep._no_stream_options:
        body["stream_options"] = {"include_usage": True}
    body.update(ep.extra_body)
    return body


def _check_messages(messages: list[dict]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise InvalidParameterError("the conversation must end with a user message")
    if not str(messages[-1].get("content", "")).strip():
        raise InvalidParameterError("the message is empty: type something to send")


def _finish(reason: str | None) -> str:
    return {"stop": "eos", "length": "length", None: ""}.get(reason, str(reason))


def stream_endpoint_reply(ep: Endpoint, messages: list[dict], system: str | None = None,
                          params: GenerationParams | None = None, cancel: threading.Event | None = None,
                          client=None, stream: bool = True) -> Iterator[StreamEvent]:
    """Like ``engine.stream_reply``: yield the reply as it grows; the last event has ``done=True`` and the stats.

    Raises ``EndpointError`` (a ``PlaygroundError``) with a one-line reason for every failure: unreachable server,
    HTTP 4xx/5xx (wrong model name, bad key …), a stream cut before its end. ``cancel`` or closing the generator
    stops reading and closes the connection (the server sees the client go away). ``stream=False`` makes one
    plain request and yields a single final event (TTFT is then the whole request time).
    """
    import httpx

    t_start = time.perf_counter()
    params = params or GenerationParams()
    _check_messages(messages)
    own = client is None
    if own:
        client = httpx.Client(timeout=httpx.Timeout(ep.timeout_s, connect=CONNECT_TIMEOUT_S))
    try:
        yield from _request(ep, client, messages, system, params, cancel, stream, t_start)
    finally:
        if own:
            client.close()


def _request(ep, client, messages, system, params, cancel, stream, t_start) -> Iterator[StreamEvent]:
    import httpx

    stats = EndpointReplyStats(model=ep.choice, variant=VARIANT, device=ep.device, endpoint=ep.name)
    if params.repetition_penalty != 1.0:
        stats.notes.append("repetition_penalty is not part of the OpenAI API: not sent (use extra_body)")
    if params.min_new_tokens:
        stats.notes.append("min_new_tokens is not part of the OpenAI API: not sent (vLLM takes min_tokens and "
                           "ignore_eos in extra_body)")
    if params.kv_cache != "default":
        stats.notes.append(f"kv_cache={params.kv_cache} applies to local models: the server keeps its own KV cache "
                           f"(vLLM: --kv-cache-dtype, LMDeploy: --quant-policy)")
    timeout = httpx.Timeout(ep.timeout_s, connect=CONNECT_TIMEOUT_S)
    ep.check_address()
    for attempt in (1, 2):
        body = build_body(ep, messages, system, params, stream, client)
        try:
            with client.stream("POST", f"{ep.url}/chat/completions", json=body, headers=ep.headers(),
                               timeout=timeout) as resp:
                stats.http_status = resp.status_code
                if resp.status_code >= 400:
                    detail = _body_detail(_read_bounded(resp, MAX_MODELS_BYTES).decode("utf-8", "replace"))
                    if attempt == 1 and stream and "stream_options" in detail and resp.status_code in (400, 422):
                        ep._no_stream_options = True    # an older server: ask again without usage
                        continue
                    raise EndpointError(_http_message(ep, resp.status_code, detail))
                if not stream:
                    yield _whole_reply(ep, resp, stats, t_start)
                    return
                yield from _read_stream(ep, resp, stats, cancel, t_start)
                return
        except httpx.HTTPError as exc:
            raise EndpointError(_transport_message(ep, exc)) from None


def _usage_tokens(data: dict) -> int | None:
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return usage["completion_tokens"]
    return None


def _whole_reply(ep: Endpoint, resp, stats: EndpointReplyStats, t_start: float) -> StreamEvent:
    try:
        data = json.loads(_read_bounded(resp, MAX_REPLY_BYTES))
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise EndpointError(f"{ep.choice} ({ep.url}) answered something that is not an OpenAI chat "
                            f"completion") from None
    now = time.perf_counter()
    stats.ttft_s = stats.total_s = now - t_start
    usage = _usage_tokens(data)
    stats.new_tokens, stats.token_count = (usage, "usage") if usage is not None else (0, "chunks")
    if isinstance(data.get("usage"), dict):
        stats.prompt_tokens = int(data["usage"].get("prompt_tokens") or 0)
    stats.finish_reason = _finish(choice.get("finish_reason"))
    stats.decode_tok_s = stats.new_tokens / stats.total_s if stats.total_s > 0 else 0.0
    stats.notes.append("not streamed: TTFT is the whole request time, tok/s is tokens ÷ that time")
    return StreamEvent(text=text, delta=text, done=True, stats=stats)


def _read_stream(ep: Endpoint, resp, stats: EndpointReplyStats, cancel, t_start: float) -> Iterator[StreamEvent]:
    import httpx

    text, chunks = "", 0
    usage = None
    finish = None
    done_marker = False
    t_first = t_last = None
    stats.finish_reason = ""
    received = 0
    try:
        for line in resp.iter_lines():
            received += len(line) + 1
            if received > MAX_REPLY_BYTES:
                raise EndpointError(f"the stream from {ep.choice} passed {MAX_REPLY_BYTES >> 20} MB: stopped")
            if cancel is not None and cancel.is_set():
                stats.finish_reason = "stopped"
                break
            if not line or line.startswith(":"):
                continue
            if line.startswith("event:"):
                if "error" in line and not ep.public_only:
                    stats.notes.append(f"server event: {line[6:].strip()}")
                continue
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done_marker = True
                break
            try:
                data = json.loads(payload)
            except ValueError:
                raise EndpointError(f"{ep.choice} sent a stream line that is not JSON" if ep.public_only else
                                    f"{ep.choice} ({ep.url}) sent a stream line that is not JSON: "
                                    f"{ep.redact(payload)[:120]!r}") from None
            if not isinstance(data, dict):
                continue
            if data.get("error") and ep.public_only:
                raise EndpointError(f"{ep.choice} reported an error mid-stream after {chunks} chunks")
            if data.get("error"):
                raise EndpointError(f"{ep.choice} ({ep.url}) reported an error mid-stream after {chunks} chunks: "
                                    f"{ep.redact(_body_detail(json.dumps(data)))}")
            usage = _usage_tokens(data) if _usage_tokens(data) is not None else usage
            if isinstance(data.get("usage"), dict) and data["usage"].get("prompt_tokens"):
                stats.prompt_tokens = int(data["usage"]["prompt_tokens"])
            for choice in data.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta:
                    now = time.perf_counter()
                    if t_first is None:
                        t_first = now
                        stats.ttft_s = now - t_start
                    else:
                        stats.itl_s.append(now - t_last)
                    t_last = now
                    chunks += 1
                    text += delta
                    yield StreamEvent(text=text, delta=delta)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    except GeneratorExit:
        stats.finish_reason = "stopped"
        raise
    except httpx.HTTPError as exc:
        raise EndpointError(f"the stream from {ep.choice} ({ep.url}) was cut after {chunks} text chunks: "
                            f"{_transport_message(ep, exc)}") from None
    if stats.finish_reason != "stopped":
        if finish is None and not done_marker:
            raise EndpointError(
                f"the stream from {ep.choice} ({ep.url}) was cut after {chunks} text chunks: the connection ended "
                f"before the reply did (server stopped or crashed?)")
        stats.finish_reason = _finish(finish) or "eos"
    stats.total_s = time.perf_counter() - t_start
    if usage is not None:
        stats.new_tokens, stats.token_count = usage, "usage"
        stats.notes.append("token count from the server's usage; TTFT, tok/s and gaps measured here (client-side)")
    else:
        stats.new_tokens, stats.token_count = chunks, "chunks"
        stats.notes.append("the server sent no usage: tokens counted as text chunks; TTFT, tok/s and gaps "
                           "measured here (client-side)")
    if t_first is not None and t_last is not None and t_last > t_first and stats.new_tokens > 1:
        stats.decode_tok_s = (stats.new_tokens - 1) / (t_last - t_first)
    stats.mem_kind = "server"
    yield StreamEvent(text=text, delta="", done=True, stats=stats)


def chat_endpoint(ep: Endpoint, messages: list[dict], system: str | None = None,
                  params: GenerationParams | None = None, stream: bool = True) -> tuple[str, EndpointReplyStats]:
    """The whole reply and its stats (``stream=False``: one plain, non-streamed request)."""
    last = None
    for last in stream_endpoint_reply(ep, messages, system, params, stream=stream):
        pass
    assert last is not None and last.done
    return last.text, last.stats


# ---- registry and configuration ------------------------------------------------------------------------------------
