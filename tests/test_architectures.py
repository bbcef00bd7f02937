"""The architecture files behind the random-weight benchmarks: each builds (on the meta device, no memory) into a
model whose parameter count is the one its ``params_note`` states, so a table that says "Llama-2-13B shape" or
"6.2B GLM class" measures a model of that size."""
from __future__ import annotations

import re

import pytest

from benchmarks.random_weights import list_architectures, load_architecture

UNITS = {"B": 1e9, "M": 1e6}


def stated_params(note: str) -> float:
    m = re.search(r"(\d+(?:\.\d+)?)\s*([BM])\b", note)
    assert m, f"params_note states no parameter count: {note!r}"
    return float(m.group(1)) * UNITS[m.group(2)]


@pytest.mark.parametrize("name", list_architectures())
def test_architecture_builds_with_the_stated_parameter_count(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = load_architecture(name)
    cfg = dict(arch["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())     # tied embeddings count once
    stated = stated_params(arch["params_note"])
    assert abs(n - stated) / stated < 0.02, f"{name}: {n / 1e9:.3f}B parameters, its note says {arch['params_note']!r}"
    assert type(model).__name__ == arch["config"]["architectures"][0]


def test_the_glm_class_shape_is_chatglm_6b_sized():
    """Issue: a 6.2B GLM-class model (hidden 4096, 28 layers, vocab 130528, ungated 4x MLP)."""
    c = load_architecture("glm-6b-class")["config"]
    assert (c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]) == (4096, 28, 130528)
    assert c["intermediate_size"] == 4 * c["hidden_size"]
