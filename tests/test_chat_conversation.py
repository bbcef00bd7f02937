"""Issue #17: the context meter beside the input, conversations exported (JSON with every reply's settings and
stats, Markdown) and imported (validated), and editing an earlier user message to branch from it."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
from conftest import DEFAULT_MODEL

PARAMS = dict(max_new_tokens=12, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
              kv_cache="default")
SYSTEM = "You are a concise assistant."


def _path(update) -> Path:
    """The file a gr.File update offers for download."""
    value = update.value
    return Path(value["path"] if isinstance(value, dict) else value)


class _Request:
    session_hash = "conversation-test"
    username = None


@pytest.fixture(scope="module")
def ctx(manager, smollm_bf16):
    from playground.ui.app import build_app
    return build_app(manager).playground_ctx


@pytest.fixture(scope="module")
def two_turns(ctx):
    from playground.ui import chat_handlers
    hist = []
    for question in ("What is the capital of France?", "And of Italy?"):
        hist = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", question, hist, SYSTEM, _Request(), None,
                                  **PARAMS))[-1][1]
    return hist


def test_context_meter_counts_the_conversation_and_the_reply_budget(ctx, two_turns, smollm_bf16):
    from playground.engine import build_prompt
    from playground.ui import chat_handlers
    meter = chat_handlers.context_meter
    msgs = [{"role": m["role"], "content": m["content"]} for m in two_turns]
    used = len(build_prompt(smollm_bf16, msgs, SYSTEM)[0])
    assert meter(ctx, DEFAULT_MODEL, "bf16", two_turns, SYSTEM, 256) == f"context {used} + 256 of 8192 tokens"
    empty = meter(ctx, DEFAULT_MODEL, "bf16", [], SYSTEM, 256)
    n_system = int(empty.split()[1])
    assert 0 < n_system < used and empty.endswith("+ 256 of 8192 tokens"), empty
    assert meter(ctx, DEFAULT_MODEL, "bf16", [], "", 64) == "context 0 + 64 of 8192 tokens"
    over = meter(ctx, DEFAULT_MODEL, "bf16", two_turns, SYSTEM, 8190)
    assert over == f"⚠ context {used} + 8190 of 8192 tokens: the reply will be cut to {8192 - used} tokens", over
    assert meter(ctx, DEFAULT_MODEL, "nf4", [], SYSTEM, 256) == "context: load the model to count tokens"


def test_export_json_has_every_replys_settings_and_stats_and_imports_back(ctx, two_turns, tmp_path):
    from playground.ui import chat_handlers
    exported = chat_handlers.export_json(DEFAULT_MODEL, "bf16", two_turns, SYSTEM, **PARAMS)
    data = json.loads(_path(exported).read_text(encoding="utf-8"))
    assert data["format"] == "quant-playground-conversation" and data["system_prompt"] == SYSTEM
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    for reply in data["messages"][1::2]:
        assert reply["settings"]["model"] == DEFAULT_MODEL and reply["settings"]["variant"] == "bf16"
        assert reply["settings"]["max_new_tokens"] == 12 and reply["settings"]["greedy"] is True
        assert reply["stats"]["new_tokens"] > 0 and reply["stats"]["ttft_s"] > 0 and "TTFT" in reply["badge"]
    assert "Paris" in data["messages"][1]["content"]
    md = _path(chat_handlers.export_markdown(DEFAULT_MODEL, "bf16", two_turns, SYSTEM, **PARAMS)).read_text()
    assert md.count("## User") == 2 and f"## Assistant ({DEFAULT_MODEL} [bf16])" in md and "> TTFT" in md
    assert "What is the capital of France?" in md and f"**System prompt:** {SYSTEM}" in md

    shown, hist, system, status = chat_handlers.import_conversation(ctx, DEFAULT_MODEL, "bf16", str(_path(exported)),
                                                               _Request())
    assert hist == two_turns and system == SYSTEM and "✓ Imported: 4 messages" in status
    assert len(shown) == 4 and "reply-badge" in shown[1]["content"]
    # and the imported conversation goes on
    frames = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "And of Germany?", hist, system, _Request(), None,
                                **PARAMS))
    assert len(frames[-1][1]) == 6


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "is not JSON (Expecting property name enclosed in double quotes at line 1)"),
    (b"\xff\xfe\x00", "is not UTF-8 text"),
    (b'{"title": "x"}', 'is not a conversation: expected an object with "messages"'),
    (b'{"format": "other-app", "messages": []}', "is a 'other-app' file"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', 'message 1 must have the role "user" or "assistant"'),
    (b'{"messages": [{"role": "user", "content": 5}]}', "message 1 has no text content"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     "messages 1 and 2 are both from the user"),
    (b'{"messages": [{"role": "assistant", "content": "a"}]}', "the first message must be the user's"),
    (b'{"messages": [], "system_prompt": 7}', '"system_prompt" must be text'),
    (b" " * (2 * 1024 * 1024 + 1), "is 2.1 MB: a conversation file may be at most 2 MB"),
])
def test_import_refuses_a_bad_file_with_one_line(ctx, tmp_path, content, problem):
    from playground.ui import chat_handlers
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="Cannot import: bad.json"):
        shown, hist, system, status = chat_handlers.import_conversation(ctx, DEFAULT_MODEL, "bf16", str(path),
                                                                   _Request())
    assert hist == gr.skip() and status.startswith("⚠ Error: cannot import bad.json") and problem in status, status
    assert "\n" not in status


def test_editing_an_earlier_user_message_branches_from_it(ctx, two_turns):
    from playground.ui import chat_handlers
    edit = gr.EditData(None, {"index": 0, "value": "What is the capital of Japan?",
                              "previous_value": "What is the capital of France?"})
    frames = list(chat_handlers.edit_message(ctx, DEFAULT_MODEL, "bf16", two_turns, SYSTEM, edit, _Request(), None,
                                        **PARAMS))
    hist = frames[-1][1]
    assert [m["role"] for m in hist] == ["user", "assistant"], hist            # what came after is dropped
    assert hist[0]["content"] == "What is the capital of Japan?" and "Tokyo" in hist[1]["content"], hist
    assert two_turns[0]["content"] == "What is the capital of France?"         # the original is not changed
    # only the user's messages can be edited: an assistant index is refused with a warning, nothing changes
    bad = gr.EditData(None, {"index": 1, "value": "x", "previous_value": "y"})
    with pytest.warns(UserWarning, match="only a user message of this conversation can be edited"):
        frames = list(chat_handlers.edit_message(ctx, DEFAULT_MODEL, "bf16", two_turns, SYSTEM, bad, _Request(), None,
                                            **PARAMS))
    assert frames[-1][1] == gr.skip()
