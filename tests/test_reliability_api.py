"""Hostile input through the API and the UI's own event handlers, against a real ``launch.py`` server.

Property-based (hypothesis): message text (empty, control characters, mixed scripts, any Unicode), parameters out
of range or of the wrong type, unknown model and variant names, histories of the wrong shape, through /chat, the
Chat tab's send and the Compare tab's run. Every case must end
in either a reply or a one-line validation message: never a traceback, never "unexpected error", never an HTTP
500, never a broken event stream; and the server keeps answering. Plus what only a hand-written client can send
(NaN, lone surrogates, unknown events, absurd nesting, huge bodies), a 1 MB message, and ``trust_remote_code``.
"""
from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_support import DEFAULT_MODEL, event_ids, queue_call, server

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CONTROL = "".join(map(chr, [*range(0, 32), 127, *range(0x80, 0xA0), 0x200B, 0x200D, 0x202E, 0xFEFF, 0xFFFD]))
WORDS = ["Hello", "Привет", "你好", "こんにちは", "مرحبا", "שלום", "नमस्ते", "안녕하세요", "Γειά", "🙂", "👩‍👩‍👧",
         "e\u0301", "ﷺ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u202eevil", "Zalgơ̸̢͓", "\t", "\n"]
MESSAGES = st.one_of(
    st.just(""), st.text(alphabet=" \t\n\r\x0b\x0c\u3000\u00a0", max_size=20),           # empty / blank
    st.text(alphabet=st.sampled_from(CONTROL), min_size=1, max_size=40),                # control characters
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join),            # mixed scripts
    st.text(alphabet=st.characters(codec="utf-8"), max_size=120),                       # any valid Unicode
)
PARAMS = ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "greedy", "kv_cache"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 20, 10 ** 20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "text", "type"]) | st.text(max_size=6), kids, max_size=3),
    max_leaves=8)
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.integers(-3, 12),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(-1, 6), st.text(max_size=16),
    st.sampled_from(["", "nan", "inf", "-1", "1e999", "0x10", "true", "bf16", " 7 "]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
NAMES = st.one_of(st.text(max_size=40), st.sampled_from([
    "int3", "BF16", " bf16 ", "gptq ", "../bf16", "", "smollm2", "no-such-org/no-such-model", "./no/such/dir",
    "/etc", "..", "~", "a" * 5000, "org/" + "b" * 300, "a\x00b", "endpoint:nope", "random:tiny-llama"]),
    st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2))
GOOD = dict(model=DEFAULT_MODEL, variant="bf16", message="Hi", history=[], system_prompt="", max_new_tokens=1,
            temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True)


def long_valid_count(name: str, value) -> bool:
    """A value that would be accepted and ask for a long reply (keeps the property tests fast)."""
    if name != "max_new_tokens" or isinstance(value, bool):
        return False
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(number) and number == int(number) and number > 4


def write_custom_code_model(folder, marker) -> None:
    """A tiny Llama whose config points at its own modeling file (auto_map), which leaves a marker when run."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from playground.catalog import resolve
    tok = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL).path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_lm", architectures=["MyCustomLM"],
                  auto_map={"AutoConfig": "modeling_custom.MyConfig",
                            "AutoModelForCausalLM": "modeling_custom.MyCustomLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class MyConfig(LlamaConfig):\n    model_type = 'my_custom_lm'\n\n\n"
        "class MyCustomLM(LlamaForCausalLM):\n    config_class = MyConfig\n")


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom-code")
    out = {}
    for name in ("trusted", "untrusted"):
        folder, marker = root / name, root / f"{name}.ran"
        folder.mkdir()
        write_custom_code_model(folder, marker)
        out[name] = (folder, marker)
    return out


@pytest.fixture(scope="module")
def srv(custom):
    with server("--device", "cpu", "--trust-remote-code", str(custom["trusted"][0])) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    from gradio_client import Client
    return Client(srv.url, verbose=False)


@pytest.fixture(scope="module")
def ui_events(srv):
    return event_ids(srv.url)


def api_call(client, **changes):
    """(reply, stats) or the AppError message; anything else (a transport error, a 500) fails the test."""
    from gradio_client.exceptions import AppError
    args = dict(GOOD, **changes)
    try:
        return client.predict(**args, api_name="/chat"), None
    except AppError as exc:
        return None, str(exc)


def assert_answered(result, error, where: str) -> None:
    if error is None:
        reply, stats = result
        assert isinstance(reply, str) and isinstance(stats, dict) and stats.get("badge"), (where, result)
        return
    assert error.strip(), f"{where}: an empty error message"
    assert "Traceback" not in error and 'File "' not in error, f"{where}: a stack trace reached the user: {error}"
    assert not error.startswith("unexpected error"), f"{where}: an unhandled case: {error}"


def assert_ui_answered(res, where: str) -> None:
    assert res.http_status in (200, 422), f"{where}: HTTP {res.http_status} {res.detail}"
    if res.http_status == 200:
        assert res.success is not None, f"{where}: the event stream broke: {res.messages}"
        if not res.success:
            assert_answered(None, res.detail, where)


# ---- /chat through gradio_client ---------------------------------------------------------------------------------
@settings(max_examples=15, **SETTINGS)
@given(message=MESSAGES)
def test_api_any_message_text_gets_a_reply_or_a_validation_message(client, message):
    result, error = api_call(client, message=message)
    assert_answered(result, error, f"message={message!r}")
    if not message.strip():
        assert error == "the message is empty: type something to send"
    else:
        assert error is None, f"a non-empty message was refused: {error}"


@settings(max_examples=40, **SETTINGS)
@given(name=st.sampled_from(PARAMS + ["system_prompt"]), value=HOSTILE)
def test_api_parameters_out_of_range_or_of_the_wrong_type(client, name, value):
    if long_valid_count(name, value):
        value = 10 ** 6                      # still hostile (out of range), but never a long reply
    result, error = api_call(client, **{name: value})
    assert_answered(result, error, f"{name}={value!r}")
    if error is not None and name != "system_prompt":
        assert name in error or "seed" in error, f"{name}={value!r}: the message does not name it: {error}"


@settings(max_examples=25, **SETTINGS)
@given(which=st.sampled_from(["model", "variant"]), value=NAMES)
def test_api_unknown_model_and_variant_names(client, which, value):
    result, error = api_call(client, **{which: value})
    assert_answered(result, error, f"{which}={value!r}")
    if isinstance(value, str) and value.strip() not in (DEFAULT_MODEL, "bf16"):
        assert error is not None, f"{which}={value!r} was accepted"


@settings(max_examples=25, **SETTINGS)
@given(history=st.one_of(
    JSONISH,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "", None]),
                                    "content": JSONISH}), max_size=4)))
def test_api_history_of_the_wrong_shape(client, history):
    result, error = api_call(client, history=history)
    assert_answered(result, error, f"history={history!r}")


def test_api_one_megabyte_message_is_refused_with_the_context_length(client):
    message = ("Hello мир 你好 🙂 \x01\x7f " * 50000).encode()[:1_000_000].decode("utf-8", "ignore")
    t0 = time.monotonic()
    result, error = api_call(client, message=message)
    assert error and "has a context of 8192 tokens" in error and "shorten it" in error, error
    assert time.monotonic() - t0 < 60


# ---- the UI's own event handlers (what the page sends, but hostile) -------------------------------------------------
def ui_send(srv, ui_events, message="Hi", model=DEFAULT_MODEL, variant="bf16", system="", **params):
    p = dict(max_new_tokens=1, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
             kv_cache="default")
    p.update(params)
    data = [model, variant, message, None, system, *(p[k] for k in PARAMS)]
    return queue_call(srv.url, ui_events["send"], data)


@settings(max_examples=12, **SETTINGS)
@given(message=MESSAGES, system=st.one_of(st.just(""), MESSAGES))
def test_ui_send_any_text(srv, ui_events, message, system):
    res = ui_send(srv, ui_events, message=message, system=system)
    assert_ui_answered(res, f"message={message!r} system={system!r}")
    assert res.success, f"the chat tab refused message={message!r}: {res.detail}"   # empty: a warning, not an error


@settings(max_examples=30, **SETTINGS)
@given(name=st.sampled_from(PARAMS + ["model", "variant", "system", "message"]), value=st.one_of(HOSTILE, NAMES))
def test_ui_send_hostile_widget_values(srv, ui_events, name, value):
    if long_valid_count(name, value):
        value = 10 ** 6
    res = ui_send(srv, ui_events, **{name: value})
    assert_ui_answered(res, f"{name}={value!r}")


COMPARE_INPUTS = ["prompt", "count", "system", *PARAMS, "model0", "model1", "model2", "model3",
                  "variant0", "variant1", "variant2", "variant3"]


def ui_compare(srv, ui_events, **changes):
    """The Compare tab's run event with the page's values (two bf16 slots, 1 new token), ``changes`` applied."""
    v = dict(prompt="Hi", count=2, system="", max_new_tokens=1, temperature=0.7, top_p=0.9, top_k=50,
             repetition_penalty=1.0, seed=-1, greedy=True, kv_cache="default",
             **{f"model{i}": DEFAULT_MODEL for i in range(4)}, **{f"variant{i}": "bf16" for i in range(4)})
    v.update(changes)
    return queue_call(srv.url, ui_events["run"], [v[k] for k in COMPARE_INPUTS])


def test_ui_compare_answers_through_the_queue(srv, ui_events):
    """The baseline of the property test below: the same call with the page's values answers in both slots."""
    res = ui_compare(srv, ui_events, prompt="What is the capital of France?", max_new_tokens=8)
    assert res.success, res.detail
    assert str(res.output["data"][:2]).count("Paris") == 2, res.output["data"][:2]


@settings(max_examples=30, **SETTINGS)
@given(name=st.sampled_from(["prompt", "count", "system", *PARAMS, "model0", "model1", "variant0", "variant1"]),
       value=st.one_of(HOSTILE, NAMES))
def test_ui_compare_hostile_widget_values(srv, ui_events, name, value):
    if long_valid_count(name, value):
        value = 10 ** 6
    res = ui_compare(srv, ui_events, **{name: value})
    assert_ui_answered(res, f"compare {name}={value!r}")


def test_ui_one_megabyte_message(srv, ui_events):
    message = ("Hello мир 你好 🙂 " * 50000).encode()[:1_000_000].decode("utf-8", "ignore")
    res = ui_send(srv, ui_events, message=message)
    assert res.http_status == 200 and res.success is False
    assert "has a context of 8192 tokens" in res.detail, res.detail


# ---- what only a hand-written client can send -----------------------------------------------------------------------
def chat_body(api_index: int, data_json: str) -> bytes:
    return ('{"data": %s, "fn_index": %d, "session_hash": "hostile1", "event_data": null}'
            % (data_json, api_index)).encode()


@pytest.mark.parametrize("target, data_json, status, detail", [
    ("send", '["%s", "bf16", "hi", null, "", NaN, 0.7, 0.9, 50, 1.0, -1, true]' % DEFAULT_MODEL, 422,
     "NaN is not a number a request may carry"),
    ("chat", '["%s", "bf16", "hi", [], "", 1, Infinity, 0.9, 50, 1.0, -1, true]' % DEFAULT_MODEL, 422,
     "Infinity is not a number"),
    ("send", '["%s", "bf16", "a\\ud800b", null, "", 1, 0.7, 0.9, 50, 1.0, -1, true]' % DEFAULT_MODEL, 422,
     "lone surrogate U+D800"),
    ("chat", '["%s", "bf16", "hi", [{"role": "user", "content": "\\udfff"}], "", 1, 0.7, 0.9, 50, 1.0, -1, true]'
     % DEFAULT_MODEL, 422, "lone surrogate U+DFFF"),
    ("chat", "[" * 5000 + "]" * 5000, 422, "nested too deeply"),
    (999_999, "[]", 422, "fn_index 999999 names no event"),
    ("chat", '"not a list"', 422, "Input should be a valid list"),
    ("chat", "[1, 2", 422, "JSON decode error"),
])
def test_raw_hostile_requests_get_a_4xx_with_a_reason(srv, ui_events, target, data_json, status, detail):
    index = ui_events[target] if isinstance(target, str) else target
    res = queue_call(srv.url, None, raw_body=chat_body(index, data_json))
    assert res.http_status == status and detail in res.detail, (res.http_status, res.detail)


def test_raw_oversized_body_is_refused_and_the_server_keeps_serving(srv, client):
    res = queue_call(srv.url, None, raw_body=b'{"data": ["' + b"x" * (33 * 1024 * 1024) + b'"], "fn_index": 0}')
    assert res.http_status == 413 and "over 32 MB" in res.detail
    (reply, stats), error = api_call(client, message="What is the capital of France?", max_new_tokens=8)
    assert error is None and "Paris" in reply


# ---- trust_remote_code ----------------------------------------------------------------------------------------------
def test_custom_code_is_refused_unless_that_model_was_opted_in(client, custom):
    folder, marker = custom["untrusted"]
    result, error = api_call(client, model=str(folder), message="Hello")
    assert error and "contains custom code" in error
    assert f"--trust-remote-code {folder}" in error                     # says how to opt in, for this model
    assert not marker.exists(), "custom code ran without the opt-in"
    folder, marker = custom["trusted"]                                   # launched with --trust-remote-code FOLDER
    (reply, stats), error = api_call(client, model=str(folder), message="Hello", max_new_tokens=3)
    assert error is None and stats["new_tokens"] >= 0
    assert marker.read_text().startswith("ran")                          # its code ran: the opt-in works
    folder, marker = custom["untrusted"]                                 # and did not spread to other models
    assert api_call(client, model=str(folder), message="Hello")[1]
    assert not marker.exists()
