"""Issue #17 item 2: a long load in Chat is a real bar (stage, steps done of total, elapsed, an estimate) with a
Cancel that stops quantization cleanly, and the reply that waited says so in its badge.

A real GPTQ quantization through gptqmodel, of a 2-layer Llama (benchmarks/architectures/tiny-llama.json) with
SmolLM2's tokenizer: a few seconds instead of SmolLM2's two minutes, the same code path."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from conftest import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


class _Request:
    session_hash = "load-bar-test"
    username = None


PARAMS = dict(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.0, seed=-1, greedy=True,
              kv_cache="default")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A real (not random-marked) 2-layer Llama folder: GPTQ calibrates it for real."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from playground.catalog import resolve
    tok = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL).path)
    cfg = json.loads((ROOT / "benchmarks/architectures/tiny-llama.json").read_text())["config"]
    cfg.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("tiny-real") / "tiny-real"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _percent(bar: str) -> float:
    return float(re.search(r'aria-valuenow="(\d+)"', bar).group(1))


def test_gptq_load_bar_cancel_leaves_no_checkpoint_and_the_next_load_says_what_it_waited_for(
        tiny_folder, tmp_path, monkeypatch):
    from playground.manager import ModelManager
    from playground.ui import chat_handlers, loading
    from playground.ui.app import build_app
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "POLL_S", 0.05)
    ctx = build_app(ModelManager(device="cpu")).playground_ctx
    quantized = tmp_path / "cache" / "quantized"

    # 1. Cancel during the calibration: the message goes back to the box, no error, no checkpoint folder
    frames, stopped = [], False
    for f in chat_handlers.send(ctx, str(tiny_folder), "gptq", "Hello", [], "", _Request(), None, **PARAMS):
        frames.append(f)
        if not stopped and isinstance(f[4], str) and "GPTQ calibration" in f[4]:
            chat_handlers.stop(ctx, _Request())            # the Cancel button (and Stop) send this
            stopped = True
    bars = [f[4] for f in frames if isinstance(f[4], str) and 'role="progressbar"' in f[4]]
    assert any("GPTQ calibration" in b and "of 2)" in b and "elapsed" in b for b in bars), bars
    chatbot, history, box, status = frames[-1][:4]
    assert status.startswith("■ Cancelled: loading") and "nothing half-made was kept" in status, status
    assert history == [] and box == "Hello" and frames[-1][4] == ""
    assert not [p.name for p in quantized.iterdir() if not p.name.endswith(".lock")], list(quantized.iterdir())
    assert ctx.find(str(tiny_folder), "gptq") is None and not ctx.cancels.running("load-bar-test", "chat")

    # 2. The next send quantizes to the end: the bar moves, gives an estimate, and the badge names the wait
    frames = list(chat_handlers.send(ctx, str(tiny_folder), "gptq", "Hello", [], "", _Request(), None, **PARAMS))
    bars = [f[4] for f in frames if isinstance(f[4], str) and 'role="progressbar"' in f[4]]
    percents = [_percent(b) for b in bars]
    assert percents == sorted(percents) and len(set(percents)) >= 4, percents       # it moves, never back
    assert any("about" in b and "left" in b for b in bars), bars                      # an estimate
    badge = frames[-1][1][-1]["badge"]
    assert re.match(r"waited \d+ s: GPTQ calibration \d+ s, then load [\d.]+ s · TTFT", badge), badge
    assert [p.name for p in quantized.iterdir() if not p.name.endswith(".lock")], "no checkpoint was written"
    assert ctx.find(str(tiny_folder), "gptq") is not None
    ctx.manager.unload_all()


def test_reading_weights_reports_each_step_and_a_cancel_stops_it(tiny_folder):
    """The bitsandbytes/bf16 load stage had no steps (the bar sat at 60 %): transformers' weight loop reports."""
    from playground.manager import ModelManager
    from playground.errors import LoadCancelled
    from playground.progress import LoadTracker
    seen = []
    manager = ModelManager(device="cpu")
    manager.get(str(tiny_folder), "bf16", progress=lambda f, m: seen.append((f, m)))
    steps = [(f, m) for f, m in seen if m.startswith("loading weights: ")]
    assert len(steps) >= 5 and steps[-1][1].endswith(f"{steps[-1][1].split('/')[1]}"), steps
    assert 0.8 <= steps[0][0] < steps[-1][0] <= 0.97, steps
    manager.unload_all()
    cancel = threading.Event()
    tracker = LoadTracker("tiny [fp32]", cancel)

    def cancel_at_weights(fraction, message):
        if message.startswith("loading weights: 3/"):
            cancel.set()
        tracker(fraction, message)
    with pytest.raises(LoadCancelled, match="cancelled at loading weights"):
        manager.get(str(tiny_folder), "fp32", progress=cancel_at_weights)
    assert manager.loaded() == []
    assert manager.get(str(tiny_folder), "fp32").model is not None       # and it loads afterwards
