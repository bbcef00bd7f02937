"""The /chat API through gradio_client, the UI helpers, and launch.py's flags (share/auth) as a subprocess."""
from __future__ import annotations

import httpx
import pytest

from ui_support import DEFAULT_MODEL, CliProcess, free_port, running_app

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def server():
    with running_app() as (url, app, manager):
        yield url, app, manager


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client
    return Client(server[0], verbose=False)


def chat_args(**kw) -> dict:
    args = dict(model=DEFAULT_MODEL, variant="bf16", message=FRANCE, max_new_tokens=16, greedy=True)
    args.update(kw)
    return args


def test_chat_endpoint_streams_the_reply_then_the_stats(client):
    job = client.submit(**chat_args(), api_name="/chat")
    outputs = [list(o) for o in job]
    reply, stats = job.result()
    assert "Paris" in reply
    partial = [text for text, st in outputs if not st]
    assert len(partial) >= 2, f"expected several streamed chunks, got {outputs}"
    assert all(reply.startswith(p) for p in partial)              # each chunk is the reply so far
    assert stats["model"] == DEFAULT_MODEL and stats["variant"] == "bf16"
    assert stats["new_tokens"] > 0 and stats["ttft_s"] > 0 and stats["finish_reason"] == "eos"
    assert stats["peak_mem_gb"] > 0 and "tok/s" in stats["badge"]


def test_chat_endpoint_takes_history_and_chinese(client):
    history = [{"role": "user", "content": "我叫小明。"}, {"role": "assistant", "content": "你好，小明！"}]
    system = "你是一位经验丰富的厨师，回答时先列出所需食材，再分步骤说明做法。"
    ask = dict(message="我叫什么名字？", max_new_tokens=4)
    reply, stats = client.predict(**chat_args(**ask, history=history, system_prompt=system), api_name="/chat")
    assert isinstance(reply, str) and reply.strip()
    alone, alone_stats = client.predict(**chat_args(**ask), api_name="/chat")
    assert stats["prompt_tokens"] > alone_stats["prompt_tokens"]  # history and system prompt reached the model
    # Gradio's own message format (content as a list of text parts) is accepted as well
    gradio_style = [{"role": "user", "content": [{"type": "text", "text": "我叫小明。"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "你好，小明！"}]}]
    _, st2 = client.predict(**chat_args(**ask, history=gradio_style, system_prompt=system), api_name="/chat")
    assert st2["prompt_tokens"] == stats["prompt_tokens"]


def test_chat_endpoint_with_a_quantized_kv_cache(client):
    reply, stats = client.predict(**chat_args(kv_cache="int4"), api_name="/chat")
    assert "Paris" in reply
    assert stats["kv_cache"] == "int4" and stats["kv_cache_gb"] > 0 and "KV int4" in stats["badge"]
    _, plain = client.predict(**chat_args(), api_name="/chat")
    assert plain["kv_cache"] == "default" and 0 < stats["kv_cache_gb"] < plain["kv_cache_gb"]


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1), "temperature must be in [0, 5]"),
    (dict(variant="int3"), "unknown variant 'int3'"),
    (dict(message="   "), "the message is empty"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(kv_cache="fp8"), "kv_cache must be one of default, int8, int4, int2"),
    (dict(model="./no/such/model"), "no such folder"),
    (dict(history=[{"text": "hi"}]), "history[0] must be a dict with role"),
    (dict(message="hello " * 9000), "has a context of 8192 tokens"),
])
def test_chat_endpoint_bad_input_gives_a_clear_error(client, bad, message):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as info:
        client.predict(**chat_args(**bad), api_name="/chat")
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_server_keeps_serving_after_errors(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError):
        client.predict(**chat_args(temperature=99), api_name="/chat")
    reply, stats = client.predict(**chat_args(), api_name="/chat")
    assert "Paris" in reply and stats["new_tokens"] > 0


def test_only_chat_is_a_public_api_endpoint(client):
    info = client.view_api(return_format="dict", print_info=False)
    assert "/chat" in info["named_endpoints"]
    names = [p["parameter_name"] for p in info["named_endpoints"]["/chat"]["parameters"]]
    assert names == ["model", "variant", "message", "history", "system_prompt", "max_new_tokens", "temperature",
                     "top_p", "top_k", "repetition_penalty", "seed", "greedy", "kv_cache"]
    ui_events = {"/send", "/regenerate", "/undo", "/stop", "/load", "/unload", "/run", "/refresh", "/unload_all",
                 "/refresh_models", "/show_selection", "/add", "/remove", "/tick", "/start"}
    assert not ui_events & set(info["named_endpoints"]) and not info["unnamed_endpoints"]


# ---- helpers (no server) ---------------------------------------------------------------------------------------
def test_make_params_validates_widget_values():
    from playground.errors import InvalidParameterError
    from playground.ui.common import make_params
    p = make_params(32.0, 0.7, 0.9, 50.0, 1.0, -1, False)
    assert p.max_new_tokens == 32 and p.top_k == 50 and p.seed is None
    assert make_params(8, 0, 1, 0, 1, 1234.0, True).seed == 1234
    with pytest.raises(InvalidParameterError, match="top_k must be an integer"):
        make_params(8, 0.7, 0.9, "many", 1.0, None, False)
    with pytest.raises(InvalidParameterError, match="repetition_penalty"):
        make_params(8, 0.7, 0.9, 50, 9.0, None, False)
    assert make_params(8, 0.7, 0.9, 50, 1.0, None, False, "int8").kv_cache == "int8"
    assert make_params(8, 0.7, 0.9, 50, 1.0, None, False, None).kv_cache == "default"
    with pytest.raises(InvalidParameterError, match="kv_cache must be one of default, int8, int4, int2"):
        make_params(8, 0.7, 0.9, 50, 1.0, None, False, "int3")
    with pytest.raises(InvalidParameterError, match="kv_cache must be a name"):
        make_params(8, 0.7, 0.9, 50, 1.0, None, False, 4)


def test_compare_memory_plan_refuses_slots_over_budget():
    from playground.manager import ModelManager
    from playground.ui.common import UIContext
    from playground.ui.compare_tab import memory_plan

    ctx = UIContext(manager=ModelManager(budget_bytes=300 * 1024 ** 2, device="cpu"), default_model=DEFAULT_MODEL)
    lines, refusal = memory_plan(ctx, [(DEFAULT_MODEL, "int8"), (DEFAULT_MODEL, "nf4")])
    assert refusal is None and len(lines) == 2                  # ≈ 0.13 + 0.07 GB fit in 0.29 GB
    lines, refusal = memory_plan(ctx, [(DEFAULT_MODEL, "bf16"), (DEFAULT_MODEL, "fp32")])
    assert refusal and "memory budget is 0.29 GB" in refusal
    assert "smollm2-135m-instruct [fp32] ≈ 0.50 GB" in refusal and "[bf16] ≈ 0.25 GB" in refusal
    _, refusal = memory_plan(ctx, [(DEFAULT_MODEL, "bf16"), (DEFAULT_MODEL, "bf16")])
    assert refusal is None                                       # identical slots share one copy
    _, refusal = memory_plan(ctx, [(DEFAULT_MODEL, "bf16"), ("./no/such/model", "bf16"), (DEFAULT_MODEL, "int3")])
    assert "slot 2 (./no/such/model [bf16]): ./no/such/model: no such folder" in refusal
    assert "slot 3" in refusal and "unknown variant" in refusal


# ---- launch.py -------------------------------------------------------------------------------------------------
def test_launch_help_documents_every_flag():
    proc = CliProcess("--help")
    assert proc.proc.wait(60) == 0
    out = proc.wait_for(["usage:"], 10)
    for flag in ("--model", "--variant", "--device", "--host", "--port", "--share", "--auth", "--auth-file",
                 "--share-without-auth", "--concurrency-limit", "--max-queue", "--memory-budget-gb",
                 "--trust-remote-code", "--no-preload"):
        assert flag in out


def test_share_without_auth_refuses_to_start():
    proc = CliProcess("--share", "--no-preload", "--port", str(free_port()))
    assert proc.proc.wait(60) == 2
    out = proc.wait_for(["refusing"], 10)
    assert "--auth USER:PASS" in out and "--auth-file" in out and "--share-without-auth" in out


@pytest.mark.parametrize("args, message", [
    (["--auth", "alice"], "expected USER:PASS"),
    (["--auth-file", "/no/such/file"], "--auth-file /no/such/file"),
    (["--concurrency-limit", "0"], "--concurrency-limit must be at least 1"),
])
def test_bad_flags_exit_2_with_a_message(args, message):
    proc = CliProcess(*args, "--no-preload")
    assert proc.proc.wait(60) == 2
    assert message in proc.wait_for(["usage:"], 10)


def test_share_with_auth_serves_locally_when_the_tunnel_fails(tmp_path):
    """No internet here: the share link fails, the app says so and keeps serving (behind the login)."""
    users = tmp_path / "users.txt"
    users.write_text("# logins\nalice:s3cret\n\nbob:hunter2\n", encoding="utf-8")
    port = free_port()
    proc = CliProcess("--share", "--auth-file", str(users), "--no-preload", "--port", str(port),
                      env={"GRADIO_SHARE_SERVER_ADDRESS": "127.0.0.1:9"})  # a dead tunnel server, fails fast
    try:
        out = proc.wait_for(["Running on local URL", "Could not create the public share link"], timeout=120)
        assert f"still running locally at http://127.0.0.1:{port}" in out
        assert "Login required (2 user(s))" in out
        assert proc.proc.poll() is None                                  # still serving
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/config", timeout=10).status_code == 401  # login enforced
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
            assert http.post("/login", data={"username": "bob", "password": "hunter2"}).status_code == 200
            assert http.get("/config").status_code == 200
    finally:
        proc.stop()
