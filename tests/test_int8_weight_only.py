"""int8-wo: torchao's int8 weight-only variant (issue #19), next to bitsandbytes' LLM.int8 (``int8``).

Per-channel int8 weights, activations in bf16, nothing split off: its logits stay close to bf16's, its weights are
counted at their int8 size (torchao's tensor subclass reports bf16's element size and a data_ptr of 0, which
the old weight count took at face value), and it answers."""
from __future__ import annotations

import pytest
import torch

from conftest import DEFAULT_MODEL, FRANCE
from playground.engine import GenerationParams, chat
from playground.errors import InvalidParameterError
from playground.manager import weights_bytes
from playground.variants import VariantOptions


def test_a_torchao_weight_counts_its_int8_data_and_scales_not_its_logical_size():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    model = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False), torch.nn.Linear(512, 256, bias=False))
    model = model.to(torch.bfloat16)
    assert weights_bytes(model) == 2 * 256 * 512 * 2
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False))
    # int8 codes + one fp32 scale and one int8 zero point per output channel, for both layers (not one: the
    # subclass's data_ptr is 0 for every weight)
    assert weights_bytes(model) == 2 * 256 * 512 + 512 * 5 + 256 * 5


def test_int8_weight_only_stays_close_to_bf16_and_answers(manager, smollm_bf16):
    lm = manager.get(DEFAULT_MODEL, "int8-wo")
    assert lm.kernel == "Int8Tensor (torchao)"
    assert 0.45 < lm.stats.weights_bytes / smollm_bf16.stats.weights_bytes < 0.65
    tok = lm.tokenizer
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        got = lm.model(ids).logits.float()
        ref = smollm_bf16.model(ids).logits.float()
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.10, f"int8-wo logits {rel:.3f} away from bf16's (relative L2)"   # measured 0.054 on SmolLM2
    assert got[0, -1].argmax() == ref[0, -1].argmax()
    text, stats = chat(lm, FRANCE, params=GenerationParams(greedy=True, max_new_tokens=12))
    assert "Paris" in text and stats.new_tokens > 0


def test_loading_int8_wo_leaves_the_process_compile_settings_alone():
    """torchao's Int8WeightOnlyConfig turns on coordinate-descent tuning for every later compile of the process by
    default: one int8-wo warm-up then took 6 minutes on an H200, and bf16's compiles after it would have paid too.
    The variant asks it not to; a decoder tunes its own kernels only when ``tune_kernels`` says so: by default
    ("auto") int8-wo's own decoder on CUDA, whose one-row products are a bf16 copy of each weight + cuBLAS untuned
    (0.09x bf16 on an H200) and tuned Triton reductions with it, and no other variant's."""
    import torch._inductor.config as inductor

    from playground.fast_decode import FastDecoder
    from playground.manager import ModelManager
    with inductor.patch(coordinate_descent_tuning=False, coordinate_descent_check_all_directions=False):
        mm = ModelManager(device="cpu")            # a load of its own: the transform runs now
        try:
            lm = mm.get(DEFAULT_MODEL, "int8-wo")
            assert lm.kernel == "Int8Tensor (torchao)"
            assert not inductor.coordinate_descent_tuning and not inductor.coordinate_descent_check_all_directions
            opts = VariantOptions()
            assert opts.wants_tuned_kernels("cuda", "int8-wo") and not opts.wants_tuned_kernels("cpu", "int8-wo")
            assert not opts.wants_tuned_kernels("cuda", "bf16") and not opts.wants_tuned_kernels("cuda", "int8")
            assert not VariantOptions(tune_kernels="off").wants_tuned_kernels("cuda", "int8-wo")
            assert VariantOptions(tune_kernels=True).wants_tuned_kernels("cuda", "bf16")       # the old bool form
            with pytest.raises(InvalidParameterError, match="tune_kernels"):
                VariantOptions(tune_kernels="always")
            tuned = FastDecoder(lm.model, "cuda", fuse=False, tune=True)      # not run: its name and settings
            assert tuned.info.mode == "compiled + CUDA graphs, tuned kernels"
            assert FastDecoder(lm.model, "cpu", fuse=False).info.mode == "compiled (inductor)"
        finally:
            mm.unload_all()
