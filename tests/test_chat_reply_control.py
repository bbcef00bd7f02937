"""Issue #17 item 6, the Chat parts: Stop during a long prompt's prefill acts at once, frees the model within one
chunk of it, and the wait is named ("processing the prompt (512 of N tokens)"); Send, Undo and Clear during a
reply say why they do nothing; Undo and Clear drop the "last reply" line; status lines say what they mean in
words."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import DEFAULT_MODEL

PARAMS = dict(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
              kv_cache="default")


class _Request:
    def __init__(self, session="reply-control"):
        self.session_hash, self.username = session, None


@pytest.fixture(scope="module")
def ctx(manager, smollm_bf16):
    from playground.ui.app import build_app
    return build_app(manager).playground_ctx


def test_stop_during_a_long_prefill_acts_at_once_and_says_the_prompt_size(ctx, smollm_bf16):
    """Stop acts while the model is still reading the prompt: the handler stops waiting for the engine at once, and
    the engine (which reads a long prompt in chunks of PREFILL_CHUNK_TOKENS) lets go of the model within one chunk:
    after Stop at most one forward pass (the chunk in flight) runs. Until then the note says how much of the prompt
    is read."""
    from playground.engine import PREFILL_CHUNK_TOKENS, GenerationParams, stream_reply
    from playground.ui import chat_handlers
    text = "Summarize this text. " + "The quick brown fox jumps over the lazy dog near the river bank. " * 300
    req = _Request("prefill")
    frames, notes, stopped_at, passes = [], [], [], []       # passes: (start, end) of each forward pass

    def press_stop():
        stopped_at.append(time.monotonic())
        chat_handlers.stop(ctx, req)
    hooks = [smollm_bf16.model.register_forward_pre_hook(lambda *_: passes.append([time.monotonic(), None])),
             smollm_bf16.model.register_forward_hook(lambda *_: passes[-1].__setitem__(1, time.monotonic()))]
    try:
        for f in chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", text, [], "", req, None, **PARAMS):
            frames.append(f)
            if isinstance(f[4], str) and "Processing the prompt" in f[4]:
                notes.append(f[4])
                if " of " in f[4] and not stopped_at:
                    press_stop()                                # the model has read one chunk, not all
        took = time.monotonic() - stopped_at[0]
        with smollm_bf16.lock:                                   # the abandoned prefill lets go of the model
            pass
    finally:
        for hook in hooks:
            hook.remove()
    assert notes and "tokens)… Stop ends it." in notes[0], notes
    n = int(notes[0].split("Processing the prompt (")[1].split()[0])
    assert f"Processing the prompt ({PREFILL_CHUNK_TOKENS} of {n} tokens)" in notes[1], notes   # a bar and its line
    assert 'aria-valuenow="' in notes[1] and 'aria-valuenow="100"' not in notes[1]
    after_stop = [(a, b) for a, b in passes if b is None or b > stopped_at[0]]
    assert len(after_stop) <= 1 and len(passes) <= 3, (len(passes), len(after_stop))  # of ⌈n / 512⌉ = 8 chunks
    status, history = frames[-1][3], frames[-1][1]
    assert f"■ Stopped while the model was processing the prompt ({n} tokens): no reply" in status, status
    assert history == [{"role": "user", "content": text}]     # the question stays; Regenerate can answer it
    assert frames[-1][4] == "" and not ctx.cancels.running("prefill", "chat")
    # how long the whole prefill takes: Stop acted long before it would have ended
    *_, last = stream_reply(smollm_bf16, [{"role": "user", "content": text}], "",
                            GenerationParams(max_new_tokens=1, greedy=True))
    prefill_s = last.stats.ttft_s
    assert last.stats.prompt_tokens == n > 4 * PREFILL_CHUNK_TOKENS and prefill_s > 1.0, (n, prefill_s)
    assert took < 1.0, f"Stop took {took:.1f} s to act (a prefill takes {prefill_s:.1f} s)"
    # the model stays usable
    frames = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "What is the capital of France?", [], "", req, None,
                                **PARAMS))
    assert "Paris" in frames[-1][1][-1]["content"]


def test_send_undo_clear_during_a_reply_say_so_and_undo_clear_drop_the_last_reply_line(ctx):
    from playground.ui import chat_handlers
    req = _Request("busy")
    first = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "What is the capital of France?", [], "", req, None,
                               **PARAMS))
    history, status = first[-1][1], first[-1][3]
    assert "last reply:" in status and status.startswith("✓ Loaded: ")
    # a long reply runs in another thread (as the page's first Send) …
    started = threading.Event()

    def long_reply():
        for _ in chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "Tell me a long story.", history, "", req, None,
                               **dict(PARAMS, max_new_tokens=400)):
            started.set()
    worker = threading.Thread(target=long_reply)
    worker.start()
    try:
        assert started.wait(60) and ctx.cancels.running("busy", "chat")
        # … so a second Send, an Undo and a Clear say why nothing happens (they were dropped without a word)
        with pytest.warns(UserWarning, match="A reply is generating: press Stop first, then send"):
            frames = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "And Spain?", history, "", req, None,
                                             **PARAMS))
        assert frames == [chat_handlers.frame()]                                  # nothing changes on the page
        with pytest.warns(UserWarning, match="A reply is generating: press Stop first, then undo"):
            chat_handlers.undo(ctx, DEFAULT_MODEL, "bf16", history, req)
        with pytest.warns(UserWarning, match="then clear"):
            chat_handlers.clear(ctx, DEFAULT_MODEL, "bf16", req)
    finally:
        chat_handlers.stop(ctx, req)
        worker.join(60)
    assert not ctx.cancels.running("busy", "chat")
    shown, hist, box, status = chat_handlers.undo(ctx, DEFAULT_MODEL, "bf16", history, req)
    assert hist == [] and box == "What is the capital of France?"
    assert "last reply" not in status and status.startswith("✓ Loaded: "), status
    chatbot, hist, status = chat_handlers.clear(ctx, DEFAULT_MODEL, "bf16", req)
    assert hist == [] and "last reply" not in status


def test_status_lines_say_what_they_mean_in_words(ctx):
    from playground.ui import chat_handlers
    frames = []
    with pytest.raises(Exception, match="unknown variant"):
        for f in chat_handlers.send(ctx, DEFAULT_MODEL, "int3", "Hi", [], "", _Request(), None, **PARAMS):
            frames.append(f)
    assert frames[-1][3].startswith("⚠ Error: unknown variant"), frames[-1][3]
    assert chat_handlers.selection_status(ctx, DEFAULT_MODEL, "bf16").startswith("✓ Loaded: ")
    assert chat_handlers.selection_status(ctx, "no/such-model", "bf16").startswith(
        "○ no/such-model [bf16] is not loaded")


def test_the_last_frame_of_a_load_or_a_reply_comes_after_it_has_ended_and_send_during_a_load_says_so(ctx):
    """The page shows a frame while the handler's generator waits to be resumed: the Load's "Loaded" line and a
    reply's last frame come when the session is free again, so a Send clicked as they appear runs (it was refused
    as "a reply is generating"). A Send during a load names the load."""
    from playground.ui import chat_handlers, loading
    req = _Request("load-then-send")
    for frame in loading.load(ctx, DEFAULT_MODEL, "bf16", req):
        if frame[0].startswith("✓ Loaded: "):
            assert not ctx.cancels.running("load-then-send", "chat"), "the last frame came before the load ended"
    for frame in chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "What is the capital of France?", [], "", req, None,
                                    **PARAMS):
        hist = frame[1] if isinstance(frame[1], list) else []          # gr.skip() leaves it as it is
        last_reply = bool(hist) and hist[-1].get("role") == "assistant" and bool(hist[-1].get("badge"))
        assert not last_reply or not ctx.cancels.running("load-then-send", "chat"), "the reply had not ended"
    assert last_reply
    ctx.cancels.start("load-then-send", "chat", kind="load")        # as while a model loads
    try:
        with pytest.warns(UserWarning, match=r"A model is loading: wait for it \(or press Cancel\), then send"):
            assert list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "Hi", [], "", req, None, **PARAMS)) == \
                [chat_handlers.frame()]
    finally:
        ctx.cancels.drop_session("load-then-send")
