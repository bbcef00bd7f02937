"""What a person trips over in Chat and Compare (issue #17). Compare: greedy by default so that slots differ only
by model and variant, one seed for every slot when it samples, and a line under the slots that says which answers
agree and where they part (with sampling on by default, bf16 answered nonsense where int8 was right, and a user
concluded int8 was better). Chat: a reply cut at its token limit says so and Continue extends it; a one-token
reply has no decode speed rather than "0.0 tok/s"."""
from __future__ import annotations

from conftest import DEFAULT_MODEL
from ui_support import by_elem_id, ui_handler


class _Request:
    session_hash = "compare-tab-test"
    username = None


def _run(app, *, greedy, seed, variants=("bf16", "bf16")):
    run = ui_handler(app, "compare_tab", "run")
    question = "What is the capital of France?"
    frames = list(run(question, 2, "You are a helpful assistant.", 12, 0.7, 0.9, 50, 1.0, seed, greedy, "default",
                      DEFAULT_MODEL, DEFAULT_MODEL, DEFAULT_MODEL, DEFAULT_MODEL, *variants, "bf16", "bf16",
                      _Request(), lambda *a, **k: None))
    return frames[-1]


def test_compare_is_greedy_by_default_and_says_which_answers_agree(manager, smollm_bf16):
    from playground.ui.app import build_app
    app = build_app(manager)
    assert by_elem_id(app, "compare-greedy").value is True
    assert by_elem_id(app, "chat-greedy").value is False            # the chat keeps sampling by default
    last = _run(app, greedy=True, seed=-1)
    replies, status = last[:2], last[-1]
    assert "Paris" in replies[0] and replies[0] == replies[1], replies
    assert "**Answers** (greedy): slot 2: the same answer as slot 1" in status, status


def test_sampling_uses_one_seed_for_every_slot(manager, smollm_bf16):
    from playground.ui.app import build_app
    app = build_app(manager)
    last = _run(app, greedy=False, seed=-1)                         # -1: a random seed, but one for all slots
    replies, status = last[:2], last[-1]
    assert "sampled with seed" in status and "in every slot" in status, status
    assert replies[0] == replies[1] and "the same answer as slot 1" in status, (replies, status)


def test_agreement_lines_name_the_first_word_that_differs():
    from playground.ui.compare_tab import agreement_lines
    assert agreement_lines({1: "Paris is the capital."}) == []
    assert agreement_lines({1: "Paris is the capital.", 2: "Paris is the capital.", 3: "Paris was the capital.",
                            4: "Paris is"}) == ["slot 2: the same answer as slot 1",
                                                "slot 3: differs from slot 1 at word 2",
                                                "slot 4: differs from slot 1 at word 3"]
    assert agreement_lines({2: "a b", 4: "a c"}) == ["slot 4: differs from slot 2 at word 2"]


def test_a_cut_reply_says_so_and_continue_extends_it(manager, smollm_bf16):
    """Issue #17 item 4: replies stopped at max_new_tokens mid-sentence with nothing in the bubble, and there was no
    Continue. Greedy, so the continued reply is exactly the reply one longer run gives."""
    from playground.engine import GenerationParams, chat
    from playground.ui.app import build_app
    app = build_app(manager)
    send, cont = ui_handler(app, "chat_handlers", "send"), ui_handler(app, "chat_handlers", "continue_reply")
    args = ("", 8, 0.7, 0.9, 50, 1.0, -1, True, "default", _Request(), lambda *a, **k: None)
    frames = list(send(DEFAULT_MODEL, "bf16", "Tell me about Paris.", [], *args))
    hist = frames[-1][1]
    assert hist[-1]["badge"].endswith("cut at the 8-token limit: press Continue"), hist[-1]["badge"]
    first = hist[-1]["content"]
    frames = list(cont(DEFAULT_MODEL, "bf16", hist, *args))
    hist2 = frames[-1][1]
    assert len(hist2) == 2 and hist2[-1]["content"].startswith(first) and len(hist2[-1]["content"]) > len(first)
    whole, _ = chat(smollm_bf16, [{"role": "user", "content": "Tell me about Paris."}],
                    params=GenerationParams(max_new_tokens=16, greedy=True))
    assert hist2[-1]["content"].split() == whole.split(), (hist2[-1]["content"], whole)


def test_a_one_token_reply_has_no_decode_speed_not_zero():
    from playground.engine import ReplyStats
    one = ReplyStats(model="m", variant="bf16", device="cpu", new_tokens=1, ttft_s=0.2)
    assert "— tok/s" in one.badge() and "0.0 tok/s" not in one.badge(), one.badge()
    two = ReplyStats(model="m", variant="bf16", device="cpu", new_tokens=2, ttft_s=0.2, decode_tok_s=12.5)
    assert "12.5 tok/s" in two.badge()


def test_endpoint_slots_stream_at_the_same_time_and_local_slots_say_which_they_wait_for(manager, smollm_bf16):
    """Issue #17 item 3: slots ran one after another. Endpoints now stream beside each other (and beside the local
    slots); local slots, which share the device, still take turns, and a waiting one names the slot it waits for."""
    import dataclasses

    from test_ui_browser_claims import fake_openai_server

    from playground.endpoints import Endpoint
    from playground.ui import compare_tab
    from playground.ui.app import build_app
    question = " ".join(f"word{i}" for i in range(30))            # the fake server echoes it, 50 ms a word
    with fake_openai_server() as fake:
        app = build_app(manager, endpoints=[Endpoint(fake.url, name="a"), Endpoint(fake.url, name="b")])
        ctx = app.playground_ctx
        assert compare_tab.slot_lanes(ctx, [(DEFAULT_MODEL, "bf16"), ("endpoint:a", "served"),
                                            (DEFAULT_MODEL, "bf16"), ("endpoint:b", "served")]) == [[0, 2], [1], [3]]
        frames = list(compare_tab.run(ctx, question, 4, "", _Request(), None, max_new_tokens=12, temperature=0.7,
                                      top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
                                      kv_cache="default", model0="endpoint:a", model1="endpoint:b",
                                      model2=DEFAULT_MODEL, model3=DEFAULT_MODEL, variant0="served",
                                      variant1="served", variant2="bf16", variant3="bf16"))
    final = fake.reply_to(question)
    replies = [f[:4] for f in frames]
    both_partial = [r for r in replies if all(isinstance(t, str) and "word" in t and t != final for t in r[:2])]
    assert both_partial, "the two endpoint slots never streamed at the same time"
    assert any(r[3] == "*waiting for slot 3…*" and isinstance(r[2], str) and r[2] not in ("", "…")
               and not r[2].startswith("*") for r in replies), "slot 4 did not say it waits for slot 3"
    assert "at the same time: slot 3 → slot 4 | slot 1 | slot 2" in str(frames[1][-1])
    last = frames[-1]
    assert last[0] == final and last[1] == final and last[2] and last[3], last[:4]
    assert all("TTFT" in b for b in last[4:8]) and "✓ done" in last[8]
    # a shared app that allows one reply per user at a time: all slots in one lane
    one = dataclasses.replace(ctx, policy=dataclasses.replace(ctx.policy, replies_per_user=1))
    assert compare_tab.slot_lanes(one, [(DEFAULT_MODEL, "bf16"), ("endpoint:a", "served")]) == [[0, 1]]
