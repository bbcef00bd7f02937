"""README claims about endpoints that tests/test_endpoints.py does not cover.

4. ``--endpoints-file``: the endpoints of a JSON file show up at launch and answer through the app's ``/chat`` API
   (its ``api_key`` and ``extra_body`` fields included).
5. ``benchmarks serve --request-rate / --ignore-eos / --tokenizer`` change what the benchmark does.
6. ``extra_body`` fields reach the server.
7. A stream without a ``usage`` block still gets token counts, from counting the streamed chunks.

The real server is ``transformers serve`` with the converted SmolLM2 folder (the ``served`` fixture of
tests/test_endpoints.py). What ``transformers serve`` cannot show (it refuses ``ignore_eos``, and always sends a
usage block) is shown with ``LoopbackOpenAI``: a small OpenAI-compatible server written here, on 127.0.0.1 in a
thread of the test process, that records every request it gets. It answers either with fixed text chunks or, given a
loaded model, with the real SmolLM2 through ``playground.engine.stream_reply``, honouring vLLM's ``ignore_eos`` and
``min_tokens``.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from test_endpoints import SECRET, served, smollm_dir  # noqa: F401 - the transformers serve fixtures
from ui_support import DEFAULT_MODEL, CliProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
FILE_SECRET = "sk-file-NEVER-SHOWN-0815"
CHUNKS = ["Rome", " is", " the", " capital", " of", " Italy", "."]


class LoopbackOpenAI:
    """``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models`` on 127.0.0.1:<free port>.

    Every request is kept in ``requests`` as {"path", "headers" (lower-case names), "body", "chunks_sent"}.
    ``usage=False``: no usage block in the stream, whatever ``stream_options`` asks (as some servers do);
    ``usage_tokens`` overrides the completion_tokens it reports (to tell a usage count from a chunk count)."""

    def __init__(self, chunks=CHUNKS, lm=None, usage: bool = True, usage_tokens: int | None = None,
                 model_id: str = "loopback-model", chunk_delay_s: float = 0.01):
        self.chunks, self.lm, self.usage, self.usage_tokens = list(chunks), lm, usage, usage_tokens
        self.model_id, self.chunk_delay_s = model_id, chunk_delay_s
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    # -- answers -------------------------------------------------------------------------------------------------
    def _generate(self, body: dict):
        """(iterator of text pieces, a dict that holds finish_reason/prompt_tokens/completion_tokens at the end)."""
        result = {"finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": len(self.chunks)}
        if self.lm is None:
            def fixed():
                for piece in self.chunks:
                    yield piece
                    time.sleep(self.chunk_delay_s)
            return fixed(), result
        from playground.engine import GenerationParams, stream_reply
        max_tokens = int(body.get("max_tokens") or 16)
        min_tokens = max_tokens if body.get("ignore_eos") else min(int(body.get("min_tokens") or 0), max_tokens)
        messages = [m for m in body["messages"] if m["role"] != "system"]
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
        params = GenerationParams(max_new_tokens=max_tokens, min_new_tokens=min_tokens, greedy=True)

        def real():
            for event in stream_reply(self.lm, messages, system, params):
                if event.done:
                    st = event.stats
                    result.update(finish_reason="length" if st.finish_reason == "length" else "stop",
                                  prompt_tokens=st.prompt_tokens, completion_tokens=st.new_tokens)
                elif event.delta:
                    yield event.delta
        return real(), result

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):          # HTTP/1.0: each answer ends by closing the connection
            def log_message(self, *args):
                pass

            def _json(self, status: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with server._lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in
                                                                           self.headers.items()}, "body": None})
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": server.model_id, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body, "chunks_sent": 0}
                with server._lock:
                    server.requests.append(record)
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                pieces, result = server._generate(body)
                usage = lambda: {"prompt_tokens": result["prompt_tokens"],   # noqa: E731
                                 "completion_tokens": server.usage_tokens or result["completion_tokens"],
                                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
                if not body.get("stream"):
                    text = "".join(pieces)
                    answer = {"id": "cmpl-1", "object": "chat.completion", "model": server.model_id,
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": result["finish_reason"]}]}
                    if server.usage:
                        answer["usage"] = usage()
                    return self._json(200, answer)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

                def send(obj) -> None:
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                    self.wfile.flush()

                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": server.model_id}
                send(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
                for piece in pieces:
                    send(dict(base, choices=[{"index": 0, "delta": {"content": piece}}]))
                    record["chunks_sent"] += 1
                send(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": result["finish_reason"]}]))
                if server.usage and (body.get("stream_options") or {}).get("include_usage"):
                    send(dict(base, choices=[], usage=usage()))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler


def greedy(n: int = 16):
    from playground.engine import GenerationParams
    return GenerationParams(max_new_tokens=n, greedy=True)


def run_bench(*args: str, out: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m benchmarks serve ARGS --out OUT`` as a user runs it; returns the process and results.json."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "serve", *args, "--warmup", "0", "--out", str(out)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **(env or {})),
                          capture_output=True, text=True, timeout=600)
    results = out / "results.json"
    data = json.loads(results.read_text()) if results.exists() else {}
    return proc, data


# ---- 4. --endpoints-file ---------------------------------------------------------------------------------------------
def test_endpoints_file_is_picked_up_at_launch_and_answers_through_the_chat_api(served, tmp_path):
    from gradio_client import Client

    with LoopbackOpenAI() as loop:
        path = tmp_path / "endpoints.json"
        path.write_text(json.dumps([
            {"url": served.url, "model": served.model_dir, "name": "ts-file", "key_env": "PG_FILE_KEY",
             "timeout_s": 120},
            {"url": loop.url, "name": "rec", "api_key": FILE_SECRET,
             "extra_body": {"top_k": 3, "chat_template_kwargs": {"enable_thinking": False}}},
        ]))
        port = free_port()
        cli = CliProcess("--no-preload", "--port", str(port), "--endpoints-file", str(path),
                         env={"PG_FILE_KEY": SECRET})
        try:
            cli.wait_for(["Running on local URL"], timeout=180)
            assert f"* Endpoint endpoint:ts-file → {served.url}" in cli.output, cli.output
            assert "API key: from $PG_FILE_KEY" in cli.output
            assert f"* Endpoint endpoint:rec → {loop.url}" in cli.output and "API key: set" in cli.output
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)

            reply, stats = client.predict(model="endpoint:ts-file", variant="served", message=FRANCE[0]["content"],
                                          max_new_tokens=16, greedy=True, api_name="/chat")
            assert "Paris" in reply, reply
            assert stats["variant"] == "served" and stats["model"] == "endpoint:ts-file" and stats["ttft_s"] > 0
            assert stats["device"] == f"endpoint:{served.url}" and stats["new_tokens"] > 0

            reply, stats = client.predict(model="endpoint:rec", variant="served", message="Which city?",
                                          max_new_tokens=8, greedy=True, api_name="/chat")
            assert reply == "".join(CHUNKS) and stats["model"] == "endpoint:rec"
            (req,) = loop.chat_requests()
            # the file's key, extra_body and (no model given) the server's first listed model were all used
            assert req["headers"]["authorization"] == f"Bearer {FILE_SECRET}"
            assert req["body"]["top_k"] == 3 and req["body"]["chat_template_kwargs"] == {"enable_thinking": False}
            assert req["body"]["model"] == "loopback-model" and req["body"]["max_tokens"] == 8
            assert req["body"]["messages"][-1] == {"role": "user", "content": "Which city?"}

            page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).text
            assert "endpoint:ts-file" in page and "endpoint:rec" in page
            assert SECRET not in page and FILE_SECRET not in page
        finally:
            cli.stop()
        assert SECRET not in cli.output and FILE_SECRET not in cli.output


# ---- 5. benchmarks serve --request-rate / --ignore-eos / --tokenizer ------------------------------------------------
@pytest.mark.slow
def test_serving_benchmark_request_rate_ignore_eos_and_tokenizer(served, smollm_bf16, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served.model_dir)
    prompt_tokens, rate, n = 24, 2.0, 4

    # (a) transformers serve: a Poisson rate level and a back-to-back level; prompts cut with the model's tokenizer
    proc, data = run_bench("--endpoint", served.url, "--model", served.model_dir, "--concurrency", str(n),
                           "--request-rate", f"{rate:g},inf", "--requests", str(n), "--prompt-tokens",
                           str(prompt_tokens), "--new-tokens", "4", "--tokenizer", DEFAULT_MODEL,
                           out=tmp_path / "rate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert data["config"]["request_rates"] == [rate, "inf"] and data["config"]["tokenizer"] == DEFAULT_MODEL
    assert data["prompt_source"]["cut"] == f"{prompt_tokens} tokens of the {DEFAULT_MODEL} tokenizer"
    rated, unlimited = data["rows"]
    assert rated["request_rate"] == rate and unlimited["request_rate"] is None
    for row in (rated, unlimited):
        assert row["status"] == "ok" and row["errors"] == 0 and row["requests"] == n, row["error"]
    # arrivals at the given rate: each request starts no earlier than its seeded exponential arrival time
    # (serving.run_level draws them from random.Random(seed + level index)), never all at once
    rng = random.Random(0)
    arrivals = list(itertools.accumulate(rng.expovariate(rate) for _ in range(n)))
    starts = [r["start_s"] for r in sorted(rated["raw"]["requests"], key=lambda r: r["i"])]
    print(f"rate {rate:g}/s: scheduled arrivals {[round(a, 3) for a in arrivals]}, starts {starts}")
    assert all(s >= a - 1e-3 for s, a in zip(starts, arrivals)), (starts, arrivals)
    assert rated["duration_s"] >= arrivals[-1]
    # inf: as fast as the concurrency allows, so all four were in flight together
    reqs = unlimited["raw"]["requests"]
    print(f"rate inf: starts {[r['start_s'] for r in reqs]}, ends {[r['end_s'] for r in reqs]}")
    assert max(r["start_s"] for r in reqs) < min(r["end_s"] for r in reqs), reqs
    # --tokenizer: every prompt is the same number of tokens, so the server's count (chat template included) is
    # one number: prompt_tokens + the template's own tokens
    template = (len(tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False))
                - len(tok("x", add_special_tokens=False)["input_ids"]))
    counts = {r["prompt_tokens"] for row in (rated, unlimited) for r in row["raw"]["requests"]}
    assert counts == {prompt_tokens + template}, (counts, prompt_tokens, template)

    # (b) transformers serve refuses ignore_eos (README): every request fails with the server's reason, recorded
    proc, data = run_bench("--endpoint", served.url, "--model", served.model_dir, "--requests", "1",
                           "--prompt-tokens", "16", "--new-tokens", "4", "--ignore-eos", out=tmp_path / "ts-eos")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = data["rows"]
    assert row["errors"] == 1 and "HTTP 422" in row["error"] and "ignore_eos" in row["error"], row["error"]

    # (c) a server that honours ignore_eos/min_tokens as vLLM does, generating with the real SmolLM2 in this process
    new = 12
    with LoopbackOpenAI(lm=smollm_bf16) as loop:
        proc, data = run_bench("--endpoint", loop.url, "--requests", "3", "--prompt-tokens", "20", "--new-tokens",
                               str(new), "--ignore-eos", "--tokenizer", DEFAULT_MODEL, out=tmp_path / "eos")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        bodies = [r["body"] for r in loop.chat_requests()]
        proc2, data2 = run_bench("--endpoint", loop.url, "--requests", "1", "--prompt-tokens", "20",
                                 "--new-tokens", str(new), out=tmp_path / "no-eos")
        assert proc2.returncode == 0, proc2.stdout + proc2.stderr
        plain = loop.chat_requests()[-1]["body"]
    assert data["config"]["ignore_eos"] is True
    assert len(bodies) == 3
    for body in bodies:
        assert body["ignore_eos"] is True and body["min_tokens"] == new and body["max_tokens"] == new, body
        # the tokenizer cut: the user message is exactly --prompt-tokens tokens of SmolLM2's tokenizer
        content = body["messages"][-1]["content"]
        assert len(tok(content, add_special_tokens=False)["input_ids"]) == 20, content
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["errors"] == 0 and row["token_count"] == "usage"
    assert [r["output_tokens"] for r in row["raw"]["requests"]] == [new] * 3
    assert row["output_tokens_mean"] == new
    assert "ignore_eos" not in plain and "min_tokens" not in plain       # only sent when asked for
    assert data2["prompt_source"]["cut"].endswith("(~4 per token; no --tokenizer)")


# ---- 6. extra_body ---------------------------------------------------------------------------------------------------
def test_extra_body_fields_reach_the_server(tmp_path):
    from playground.endpoints import Endpoint, load_endpoints_file
    from playground.endpoint_reply import chat_endpoint
    from playground.engine import GenerationParams

    extra = {"top_k": 7, "repetition_penalty": 1.3, "min_tokens": 5, "ignore_eos": True,
             "chat_template_kwargs": {"enable_thinking": False}, "guided_choice": ["yes", "no"]}
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps([{"url": "127.0.0.1:1", "name": "placeholder", "extra_body": extra}]))
    (from_file,) = load_endpoints_file(path)
    assert from_file.extra_body == extra

    with LoopbackOpenAI() as loop:
        params = GenerationParams(max_new_tokens=9, temperature=0.5, top_p=0.8, top_k=20, repetition_penalty=1.2,
                                  seed=11)
        ep = Endpoint(url=loop.url, model="m", name="rec", extra_body=from_file.extra_body)
        for stream in (True, False):
            text, stats = chat_endpoint(ep, FRANCE, "Be brief.", params=params, stream=stream)
            assert text == "".join(CHUNKS)
        # the same request without extra_body: top_k and repetition_penalty stay out (not OpenAI fields)
        chat_endpoint(Endpoint(url=loop.url, model="m"), FRANCE, params=params)
        streamed, whole, bare = [r["body"] for r in loop.chat_requests()]
    for body in (streamed, whole):
        for key, value in extra.items():
            assert body[key] == value, (key, body)
        # the OpenAI fields are still there, next to the extra ones
        assert body["max_tokens"] == 9 and body["temperature"] == 0.5 and body["top_p"] == 0.8 and body["seed"] == 11
        assert body["model"] == "m" and body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    assert whole["stream"] is False
    assert not {"top_k", "repetition_penalty", "min_tokens", "ignore_eos"} & set(bare), bare
    assert any("repetition_penalty" in n for n in stats.notes)


# ---- 7. no usage block: tokens counted from chunks -----------------------------------------------------------------
def test_stream_without_usage_counts_tokens_from_chunks(tmp_path):
    from benchmarks.serving import ServeConfig, run_serving
    from playground.endpoints import Endpoint
    from playground.endpoint_reply import stream_endpoint_reply

    with LoopbackOpenAI(usage=False) as loop, LoopbackOpenAI(usage=True, usage_tokens=11) as with_usage:
        events = list(stream_endpoint_reply(Endpoint(url=loop.url, model="m", name="nousage"), FRANCE, None,
                                            greedy(32)))
        final = events[-1]
        st = final.stats
        (req,) = loop.chat_requests()
        assert req["body"]["stream_options"] == {"include_usage": True}          # asked for, not sent
        assert final.done and final.text == "".join(CHUNKS)
        assert req["chunks_sent"] == len(CHUNKS) == len(events) - 1             # role and finish chunks carry no text
        assert st.token_count == "chunks" and st.new_tokens == len(CHUNKS), st
        assert st.ttft_s > 0 and len(st.itl_s) == len(CHUNKS) - 1 and st.decode_tok_s > 0
        assert st.decode_tok_s == pytest.approx((len(CHUNKS) - 1) / sum(st.itl_s), rel=0.05)
        assert st.finish_reason == "eos" and st.prompt_tokens == 0
        assert "(chunks)" in st.badge() and f"{len(CHUNKS)} tokens" in st.badge()
        assert any("no usage" in n and "chunks" in n for n in st.notes), st.notes

        # the same stream with a usage block: the server's count wins over the chunk count
        last = list(stream_endpoint_reply(Endpoint(url=with_usage.url, model="m"), FRANCE, None, greedy(32)))[-1]
        assert (last.stats.token_count == "usage" and last.stats.new_tokens == 11
                and "(chunks)" not in last.stats.badge())

        # and in the serving benchmark: every request counted from its chunks, the row says so
        cfg = ServeConfig(url=loop.url, model="m", concurrency=[2], requests=4, prompt_tokens=16, new_tokens=32,
                          warmup=0, out=str(tmp_path / "bench"))
        data = run_serving(cfg)
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["errors"] == 0 and row["token_count"] == "chunks"
    assert [r["output_tokens"] for r in row["raw"]["requests"]] == [len(CHUNKS)] * 4
    assert row["output_tokens_mean"] == len(CHUNKS) and row["tok_s"] > 0
    assert row["prompt_tokens_measured"] is None        # the server never said: nothing is made up
