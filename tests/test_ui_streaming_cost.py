"""The UI-streaming-cost benchmark (benchmarks/experiments/ui_streaming_cost.py) in short: 2 A/B pairs of 32 tokens.

Checks the machinery (a real launch.py server, gradio_client streaming from /chat, the engine in-process, the same
greedy text on both paths, a token-by-token stream) and that the UI path is not grossly slower. The full
measurement (5+ pairs, 64 tokens) is in results/ui-streaming-cost-cpu.
"""
from __future__ import annotations

import json
import math

from benchmarks.experiments import ui_streaming_cost as usc

# The bound is loose on purpose: the target is ≤ 5%, but this runs on a shared 2-core CI machine where
# other jobs push the load average far above the core count and single-reply decode rates swing by 2x between
# adjacent runs; with only 2 pairs of 32 tokens a 5% bound would fail on noise. 50% still catches a real
# regression (e.g. the stream re-rendering the whole conversation per token, or a sleep in the loop).
LOOSE_COST_BOUND = 0.50


def test_ui_streaming_cost_short(tmp_path):
    s = usc.measure(pairs=2, max_new_tokens=32, warmup=1, warmup_tokens=4, log=lambda *a: None)
    assert len(s["runs"]) == 2
    for r in s["runs"]:
        a, b = r["A_engine"], r["B_ui"]
        assert a["new_tokens"] == b["new_tokens"] == 32 and a["finish_reason"] == b["finish_reason"] == "length"
        assert a["updates"] == 32            # one event per token in-process
        assert b["updates"] >= 16            # the client really streams (not one final update)
        assert math.isfinite(a["rate_tok_s"]) and a["rate_tok_s"] > 0
        assert math.isfinite(b["rate_tok_s"]) and b["rate_tok_s"] > 0
    assert s["texts_identical"]              # greedy: both paths decode the same reply
    for key in ("A_engine_tok_s", "B_ui_tok_s"):
        assert s[key]["min"] <= s[key]["median"] <= s[key]["p90"] <= s[key]["max"]
    # the per-pair ratio: adjacent runs share the machine's load, so it is the less noisy of the two estimates
    assert s["cost_per_pair_median"] < LOOSE_COST_BOUND, json.dumps({k: v for k, v in s.items() if k != "runs"})

    usc.write(s, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["B_ui_tok_s"] == s["B_ui_tok_s"]
    assert "cost" in (tmp_path / "out" / "README.md").read_text()
