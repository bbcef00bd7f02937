"""The UI's seam (issue #18): the generation parameters travel as one group, built once by ``params_from``;
handlers live at module level (``fn(ctx, ...)``, bound per app by ``common.bind``) so tests import them by name;
the page's wire format (the order of an event's values) and the ``/chat`` API are unchanged."""
from __future__ import annotations

import pytest
from conftest import DEFAULT_MODEL
from ui_support import ui_event

PAGE_PARAMS = ["max-new-tokens", "temperature", "top-p", "top-k", "repetition-penalty", "seed", "greedy", "kv-cache"]
VALUES = dict(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
              kv_cache="default")


class _Request:
    session_hash = "seam-test"
    username = None


@pytest.fixture(scope="module")
def app():
    from playground.manager import ModelManager
    from playground.ui.app import build_app
    return build_app(ModelManager(device="cpu"))


def test_params_from_builds_one_group_with_the_old_messages():
    from playground.errors import InvalidParameterError
    from playground.ui.common import PARAM_NAMES, make_params, params_from
    assert PARAM_NAMES == tuple(VALUES)
    p = params_from(dict(VALUES, seed="1234", top_k=20.0, other_widget="ignored"))
    assert (p.max_new_tokens, p.top_k, p.seed, p.greedy, p.kv_cache) == (8, 20, 1234, True, "default")
    assert params_from(VALUES) == make_params(*VALUES.values())          # the positional form is the same thing
    with pytest.raises(InvalidParameterError, match="top_k must be an integer"):
        params_from(dict(VALUES, top_k="many"))
    with pytest.raises(InvalidParameterError, match="temperature must be a number .finite."):
        params_from(dict(VALUES, temperature=float("nan")))
    with pytest.raises(InvalidParameterError, match="missing generation parameter.s.: top_p, greedy"):
        params_from({k: v for k, v in VALUES.items() if k not in ("top_p", "greedy")})


def test_events_send_the_parameters_as_one_named_group_in_the_old_wire_order(app):
    """What the page sends is unchanged (tests/test_reliability_api.py posts these lists by position)."""
    from playground.ui.common import PARAM_NAMES
    chat = [None if b.elem_id is None else b.elem_id for b in ui_event(app, "chat-send").inputs]
    assert chat == ["chat-model", "chat-variant", "chat-input", None, "chat-system",
                    *(f"chat-{p}" for p in PAGE_PARAMS)]
    for elem_id in ("chat-send", "chat-regenerate", "chat-continue"):
        assert ui_event(app, elem_id).input_keyword_names == list(PARAM_NAMES), elem_id
    run = ui_event(app, "compare-run")
    assert [b.elem_id for b in run.inputs] == ["compare-prompt", "compare-count", "compare-system",
                                               *(f"compare-{p}" for p in PAGE_PARAMS),
                                               *(f"compare-model-{i}" for i in range(4)),
                                               *(f"compare-variant-{i}" for i in range(4))]
    assert run.input_keyword_names[:8] == list(PARAM_NAMES)


def test_handlers_are_module_level_functions_of_ctx(app):
    from playground.ui import chat_handlers, compare_tab
    assert ui_event(app, "chat-send").fn.__wrapped__ is chat_handlers.send
    assert ui_event(app, "compare-run").fn.__wrapped__ is compare_tab.run
    assert ui_event(app, "chat-send").fn.__name__ == "send"          # the event's api_name stays "send"
    ctx = app.playground_ctx
    with pytest.warns(UserWarning, match="The message is empty"):
        frames = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "   ", [], "", _Request(), None, **VALUES))
    assert len(frames) == 1


def test_send_imported_by_name_replies(manager, smollm_bf16):
    from playground.ui import chat_handlers
    from playground.ui.app import build_app
    ctx = build_app(manager).playground_ctx
    frames = list(chat_handlers.send(ctx, DEFAULT_MODEL, "bf16", "What is the capital of France?", [], "",
                                _Request(), None, **VALUES))
    history = frames[-1][1]
    assert "Paris" in history[-1]["content"] and "TTFT" in history[-1]["badge"]
