"""Endpoints against a real OpenAI-compatible server: `transformers serve` with the converted SmolLM2 folder,
started by the tests on 127.0.0.1 (no mock server anywhere).

Chat (streamed and not), a wrong model name, an unreachable URL, a Compare run with an endpoint slot beside a local
bf16 slot, launch.py's --endpoint flag through gradio_client, the serving benchmark at concurrency 1 and 4, and the
server killed mid-stream (then restarted): under the engine, under a running launch.py, and under the serving
benchmark. The API key is checked to stay out of results files, logs and the UI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from ui_support import DEFAULT_MODEL, CliProcess, free_port, ui_handler

ROOT = Path(__file__).resolve().parents[1]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SECRET = "sk-test-NEVER-SHOWN-4711"


class ServeProcess:
    """`transformers serve MODEL_DIR --host 127.0.0.1 --port N` in its own process group; restartable."""

    def __init__(self, model_dir: str, port: int, workdir: Path):
        self.model_dir, self.port, self.workdir = model_dir, port, workdir
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "serve.log"

    def start(self, timeout: float = 240) -> None:
        hub = self.workdir / "hub"   # GET /v1/models answers 500 unless the hub cache folder exists
        hub.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model_dir, "--host", "127.0.0.1",
             "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"transformers serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"transformers serve did not answer /health within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server dies at once, mid-reply, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def smollm_dir() -> str:
    from playground.catalog import resolve
    return resolve(DEFAULT_MODEL).path


@pytest.fixture(scope="module")   # stopped after the module: the suite's later tests do not share the cores with it
def served(smollm_dir):
    with tempfile.TemporaryDirectory(prefix="serve-test-") as tmp:
        server = ServeProcess(smollm_dir, free_port(), Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def endpoint(server: ServeProcess, **kw):
    from playground.endpoints import Endpoint
    kw.setdefault("model", server.model_dir)
    return Endpoint(url=server.url, **kw)


def greedy(n: int = 16):
    from playground.engine import GenerationParams
    return GenerationParams(max_new_tokens=n, greedy=True)


# ---- no server needed ------------------------------------------------------------------------------------------
def test_endpoint_settings_are_validated_and_the_key_is_hidden(tmp_path, monkeypatch):
    from playground.endpoints import (Endpoint, EndpointRegistry, load_endpoints_file, parse_endpoint_spec)
    from playground.errors import InvalidParameterError, ModelNotFoundError

    ep = Endpoint("127.0.0.1:8000", model="m", api_key=SECRET)
    assert (ep.url == "http://127.0.0.1:8000/v1" and ep.name == "127.0.0.1:8000"
            and ep.choice == "endpoint:127.0.0.1:8000")
    assert Endpoint("http://h:1/v1/chat/completions").url == "http://h:1/v1"
    assert Endpoint("https://h/openai/v1/").url == "https://h/openai/v1"
    for shown in (repr(ep), str(ep), json.dumps(ep.to_dict())):
        assert SECRET not in shown
    assert ep.to_dict()["api_key"] == "***" and ep.headers()["Authorization"] == f"Bearer {SECRET}"
    assert ep.redact(f"invalid key {SECRET}") == "invalid key ***"
    for bad, msg in [(dict(url="ftp://h"), "http:// or https://"),
                     (dict(url="http://u:p@h"), "not in the endpoint URL"),
                     (dict(url="http://h?key=1"), "query string"), (dict(url="h", name="a b"), "endpoint name"),
                     (dict(url="h", timeout_s=0), "timeout_s"), (dict(url="h", key_env="1X"), "key_env"),
                     (dict(url="h", api_key="k", key_env="K"), "not both"), (dict(url=""), "needs a URL")]:
        with pytest.raises(InvalidParameterError, match=msg):
            Endpoint(**bad)

    spec = parse_endpoint_spec("http://10.0.0.5:8000/v1,model=meta/llama,name=big,key_env=MY_KEY")
    assert (spec.name, spec.model, spec.key_env) == ("big", "meta/llama", "MY_KEY")
    with pytest.raises(InvalidParameterError, match="takes no API key"):
        parse_endpoint_spec(f"http://h:1,key={SECRET}")
    with pytest.raises(InvalidParameterError, match="expected one of"):
        parse_endpoint_spec("http://h:1,modle=x")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(Exception, match="MY_KEY .*not set"):
        spec.headers()
    monkeypatch.setenv("MY_KEY", SECRET)
    assert spec.headers()["Authorization"].endswith(SECRET) and SECRET not in json.dumps(spec.to_dict())

    f = tmp_path / "endpoints.json"
    f.write_text(json.dumps([{"url": "http://a:1", "name": "a"}, {"url": "http://b:2/v1", "model": "x"}]))
    eps = load_endpoints_file(f)
    reg = EndpointRegistry(eps)
    assert reg.choices() == ["endpoint:a", "endpoint:b:2"] and reg.get("endpoint:b:2").model == "x"
    with pytest.raises(ModelNotFoundError, match="no endpoint named 'c'.*endpoint:a"):
        reg.get("endpoint:c")
    f.write_text(json.dumps([{"url": "http://a:1", "colour": "red"}]))
    with pytest.raises(InvalidParameterError, match="unknown key"):
        load_endpoints_file(f)


def test_unreachable_endpoint_is_a_clear_error_and_a_recorded_benchmark_failure(tmp_path):
    from benchmarks.serving import ServeConfig, run_serving
    from playground.endpoints import Endpoint, EndpointError
    from playground.endpoint_reply import chat_endpoint

    dead = Endpoint(f"http://127.0.0.1:{free_port()}/v1", name="dead")
    with pytest.raises(EndpointError, match=r"cannot reach endpoint:dead .*is the server running"):
        chat_endpoint(dead, FRANCE, params=greedy(4))
    assert dead.probe().startswith("⚠ cannot reach")
    cfg = ServeConfig(url=dead.url, concurrency=[1, 4], requests=3, prompt_tokens=16, new_tokens=4, warmup=0,
                      out=str(tmp_path / "dead"))
    data = run_serving(cfg)
    assert [r["status"] for r in data["rows"]] == ["error", "error"]
    for row in data["rows"]:
        assert row["errors"] == row["requests"] == 3 and "cannot reach" in row["error"]
        assert len(row["raw"]["requests"]) == 3                      # every failed request is kept
        assert all(not r["ok"] and "cannot reach" in r["error"] for r in row["raw"]["requests"])
    assert (tmp_path / "dead" / "report.html").exists()


# ---- against transformers serve -------------------------------------------------------------------------------
def test_chat_streamed_and_not_with_client_side_stats(served):
    from playground.endpoint_reply import chat_endpoint, stream_endpoint_reply

    ep = endpoint(served, api_key=SECRET)
    events = list(stream_endpoint_reply(ep, FRANCE, "You are a concise assistant.", greedy(16)))
    final = events[-1]
    assert final.done and "Paris" in final.text
    partial = [e for e in events if not e.done]
    assert len(partial) >= 3 and all(final.text.startswith(e.text) for e in partial)
    st = final.stats
    assert st.model == ep.choice and st.variant == "served" and st.device == f"endpoint:{served.url}"
    assert st.ttft_s > 0 and st.decode_tok_s > 0 and st.total_s >= st.ttft_s and len(st.itl_s) == len(partial) - 1
    assert st.token_count == "usage" and st.new_tokens >= len(partial) - 1 and st.prompt_tokens > 0
    assert st.finish_reason == "eos"
    assert "TTFT" in st.badge() and "tok/s" in st.badge() and "client-side" in st.badge()
    assert any("usage" in n for n in st.notes)

    text, st2 = chat_endpoint(ep, FRANCE, params=greedy(16), stream=False)
    assert "Paris" in text and st2.new_tokens > 0 and st2.token_count == "usage"
    assert any("not streamed" in n for n in st2.notes)


def test_wrong_model_name_is_a_clear_error(served):
    from playground.endpoints import EndpointError
    from playground.endpoint_reply import chat_endpoint

    with pytest.raises(EndpointError, match=r"answered HTTP 4\d\d .*check the model name") as info:
        chat_endpoint(endpoint(served, model="no-such-model", api_key=SECRET), FRANCE, params=greedy(4))
    assert "no-such-model" in str(info.value) and SECRET not in str(info.value)


class _Request:
    session_hash = "endpoint-test"


class _OtherSession:
    session_hash = "someone-else"


def test_chat_and_compare_with_an_endpoint_slot_beside_a_local_slot(served, manager, smollm_bf16):
    """The tabs' own handlers: an endpoint added in the Models tab form (its key never comes back to the browser),
    a Chat reply from it, and Compare with local bf16 | endpoint | an endpoint whose server is gone."""
    from playground.endpoints import Endpoint
    from playground.ui import build_app

    dead = Endpoint(f"http://127.0.0.1:{free_port()}/v1", name="dead")
    app = build_app(manager, endpoints=[dead])
    ctx = app.playground_ctx
    add = ui_handler(app, "served", "add")
    table, choice, key_box, note = add(served.url, served.model_dir, "ts", SECRET, _Request())
    assert key_box == "" and "endpoint:ts" in note and "✓ reachable" in note
    assert ctx.endpoints_of(_Request()).get("endpoint:ts").key() == SECRET
    # the endpoint (and its key) belongs to the session that added it: another user neither sees nor reaches it
    assert "endpoint:ts" not in ctx.endpoints_of(_OtherSession()).choices()
    assert "endpoint:dead" in ctx.endpoints_of(_OtherSession()).choices()          # launch-time: everyone's
    send = ui_handler(app, "chat_handlers", "send")
    with pytest.raises(Exception, match="no endpoint named 'ts'"):
        list(send("endpoint:ts", "bf16", "Hi", [], "", 8, 0.7, 0.9, 50, 1.0, -1, True, "default", _OtherSession(),
                  lambda *a, **k: None))
    remove = ui_handler(app, "served", "remove")
    assert "cannot be removed here" in remove("endpoint:dead", _Request())[2]  # a user cannot drop a launch one
    assert "endpoint:dead" in ctx.endpoints.choices()
    visible = json.dumps([table, note, app.get_config_file()], default=str)
    assert "endpoint:ts" in visible and SECRET not in visible

    # the Chat tab: same stream, badge under the reply
    chat_frames = list(send("endpoint:ts", "bf16", "What is the capital of France?", [], "Be concise.", 12, 0.7,
                            0.9, 50, 1.0, -1, True, "default", _Request(), lambda *a, **k: None))
    history, status_line = chat_frames[-1][1], chat_frames[-1][3]
    assert "Paris" in history[-1]["content"] and "TTFT" in history[-1]["badge"]
    assert "served" in history[-1]["badge"] and "endpoint:ts" in status_line
    assert SECRET not in json.dumps(chat_frames, default=str)

    run = ui_handler(app, "compare_tab", "run")
    frames = list(run("What is the capital of France?", 3, "You are a concise assistant.", 16, 0.7, 0.9, 50, 1.0,
                      -1, True, "default", DEFAULT_MODEL, "endpoint:ts", "endpoint:dead", DEFAULT_MODEL,
                      "bf16", "int8", "bf16", "bf16", _Request(), lambda *a, **k: None))
    replies, badges, status = frames[-1][:4], frames[-1][4:8], frames[-1][8]
    assert any("served remotely" in str(f[8]) for f in frames)           # the memory plan names the endpoint
    assert "Paris" in replies[0] and "Paris" in replies[1], replies
    assert "bf16" in badges[0] and "TTFT" in badges[0]
    assert "served" in badges[1] and "TTFT" in badges[1] and "tok/s" in badges[1]
    assert "cannot reach endpoint:dead" in replies[2] and badges[2] == ""
    assert "slot 3 failed" in status
    assert SECRET not in json.dumps(frames, default=str)
    ctx.drop_session(_Request())             # the browser tab closed: its endpoint and key are forgotten
    assert "endpoint:ts" not in ctx.endpoints_of(_Request()).choices() and ctx.session_endpoints == {}


def test_launch_py_endpoint_flag_serves_chat_through_the_api(served):
    """launch.py --endpoint ...,key_env=VAR: the /chat API answers from the server; the key stays out of the
    console, the page config, and error messages."""
    from gradio_client import Client

    port = free_port()
    cli = CliProcess("--no-preload", "--port", str(port), "--endpoint",
                     f"{served.url},model={served.model_dir},name=ts,key_env=PG_TEST_KEY",
                     env={"PG_TEST_KEY": SECRET})
    try:
        cli.wait_for(["Running on local URL"], timeout=120)
        assert "* Endpoint endpoint:ts → " in cli.output and "API key: from $PG_TEST_KEY" in cli.output
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        reply, stats = client.predict(model="endpoint:ts", variant="served", message=FRANCE[0]["content"],
                                      max_new_tokens=16, greedy=True, api_name="/chat")
        assert "Paris" in reply and stats["variant"] == "served" and stats["ttft_s"] > 0
        assert "tok/s" in stats["badge"]
        with pytest.raises(Exception, match="no endpoint named 'nope'"):
            client.predict(model="endpoint:nope", variant="served", message="hi", api_name="/chat")
        page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).text
        assert "endpoint:ts" in page and SECRET not in page
    finally:
        cli.stop()
    assert SECRET not in cli.output


def test_serving_benchmark_concurrency_1_and_4(served, tmp_path):
    out = tmp_path / "serve-run"
    env = dict(os.environ, PG_BENCH_KEY=SECRET, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "serve", "--endpoint", served.url, "--model",
                           served.model_dir, "--key-env", "PG_BENCH_KEY", "--concurrency", "1,4", "--requests", "4",
                           "--prompt-tokens", "32", "--new-tokens", "8", "--warmup", "0", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    for name in ("results.csv", "results.json", "report.html"):
        assert (out / name).exists()
        assert SECRET not in (out / name).read_text(encoding="utf-8")
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4] and [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert r["status"] == "ok" and r["errors"] == 0 and r["requests"] == 4, r["error"]
        assert r["device"] == f"endpoint:{served.url}" and r["variant"] == "served"
        assert 0 < r["ttft_ms"] <= r["ttft_ms_p90"] <= r["ttft_ms_p99"]
        assert 0 < r["itl_p50_ms"] <= r["itl_p90_ms"] <= r["itl_p99_ms"]
        assert 0 < r["e2e_p50_s"] <= r["e2e_p90_s"] <= r["e2e_p99_s"]
        assert r["req_s"] > 0 and r["tok_s"] > 0 and r["token_count"] == "usage"
        assert r["prompt_tokens_measured"] > 20 and 0 < r["output_tokens_mean"] <= 8
        assert len(r["raw"]["requests"]) == 4 and all(q["ok"] for q in r["raw"]["requests"])
        print(f"serving benchmark: concurrency {r['concurrency']}: {r['req_s']:.2f} req/s, {r['tok_s']:.1f} tok/s, "
              f"TTFT p50/p90/p99 {r['ttft_ms']:.0f}/{r['ttft_ms_p90']:.0f}/{r['ttft_ms_p99']:.0f} ms, ITL p50 "
              f"{r['itl_p50_ms']:.0f} ms, e2e p50/p99 {r['e2e_p50_s']:.2f}/{r['e2e_p99_s']:.2f} s")
    assert data["environment"]["device"] == f"endpoint:{served.url}"
    assert data["environment"]["endpoint"]["api_key"] == "from $PG_BENCH_KEY"
    csv_head = (out / "results.csv").read_text().splitlines()[0].split(",")
    for col in ("ttft_ms_p99", "itl_p99_ms", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "req_s", "tok_s", "errors"):
        assert col in csv_head
    assert "Serving benchmark" in (out / "report.html").read_text(encoding="utf-8")


def test_server_killed_mid_stream_then_restarted(served):
    """A crash mid-reply is a clear error (not a hang, not a silently short reply); a restarted server on the same
    address answers the next request."""
    from playground.endpoints import EndpointError
    from playground.endpoint_reply import chat_endpoint, stream_endpoint_reply

    ep = endpoint(served)
    ask = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
    seen = 0
    with pytest.raises(EndpointError, match=r"stream from endpoint:.* was cut after \d+ text chunks") as info:
        for event in stream_endpoint_reply(ep, ask, None, greedy(300)):
            seen += 1
            if seen == 3:
                served.kill()
    assert seen >= 3, "the reply ended before the server was killed"
    assert "cut" in str(info.value)
    served.start()
    text, stats = chat_endpoint(ep, FRANCE, params=greedy(16))
    assert "Paris" in text and stats.finish_reason == "eos"


def test_server_killed_mid_stream_through_the_app_and_during_a_serving_benchmark(served, tmp_path):
    """The same crash seen by a user of the app (a clear error; the app keeps serving local models and the endpoint
    once it is back) and by the serving benchmark (the cut and refused requests are recorded, not dropped)."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from benchmarks.serving import ServeConfig, run_serving

    count = "Count from 1 to 200, separated by commas."
    port = free_port()
    cli = CliProcess("--port", str(port), "--endpoint", f"{served.url},model={served.model_dir},name=ts")
    try:
        cli.wait_for(["Running on local URL"], timeout=240)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = client.submit(model="endpoint:ts", variant="served", message=count, max_new_tokens=300, greedy=True,
                            api_name="/chat")
        seen = 0
        for _ in job:
            seen += 1
            if seen == 3:
                served.kill()
        assert seen >= 3, "the reply ended before the server was killed"
        with pytest.raises(AppError, match=r"was cut after \d+ text chunks"):
            job.result()
        reply, stats = client.predict(model=DEFAULT_MODEL, variant="bf16", message=FRANCE[0]["content"],
                                      max_new_tokens=16, greedy=True, api_name="/chat")
        assert "Paris" in reply and stats["variant"] == "bf16"          # the app goes on serving local models
        with pytest.raises(AppError, match="cannot reach endpoint:ts"):   # the server is down: said so, at once
            client.predict(model="endpoint:ts", variant="served", message="hi", api_name="/chat")
        served.start()
        reply, _ = client.predict(model="endpoint:ts", variant="served", message=FRANCE[0]["content"],
                                  max_new_tokens=16, greedy=True, api_name="/chat")
        assert "Paris" in reply                                          # and the endpoint again once it is back
    finally:
        cli.stop()

    # the benchmark: the server dies after the first of 8 requests at concurrency 4 has finished
    done = []

    def on_request(rec):
        done.append(rec)
        if len(done) == 1:
            served.kill()

    cfg = ServeConfig(url=served.url, model=served.model_dir, concurrency=[4], requests=8, prompt_tokens=16,
                      new_tokens=48, warmup=0, out=str(tmp_path / "killed"))
    try:
        data = run_serving(cfg, on_request=on_request)
    finally:
        served.start()
    (row,) = data["rows"]
    reqs = row["raw"]["requests"]
    assert row["requests"] == 8 and len(reqs) == 8                       # every request is in the results
    failed = [r for r in reqs if not r["ok"]]
    assert row["errors"] == len(failed) >= 4, row["error"]               # at least the 4 sent after the kill
    assert all(r["error"] for r in failed) and row["error"].startswith(f"{len(failed)} of 8 requests failed")
    assert any("cannot reach" in r["error"] or "was cut" in r["error"] for r in failed), failed
    saved = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert saved["rows"][0]["errors"] == row["errors"]
