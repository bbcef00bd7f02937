"""Checkpoints of real shapes with random quantized codes, written from the shapes alone (issue #15).

Speed and memory of a decoder do not depend on its weight values, so a benchmark of a big shape needs no real
weights, and no calibration either: the 4-bit tensors a quantized checkpoint would hold are filled with random
codes and scales of the init's spread (std ≈ 0.02). What a 4-bit checkpoint keeps in 16 bits (embeddings, norms,
lm_head) is copied from the source folder: a whole random model, or a *skeleton* holding only those tensors
(``benchmarks/random_weights.py``), so a shape whose bf16 weights fit neither the GPU nor the machine (the
Qwen2-72B shape: 145 GB) is never built whole. Codes are written shard by shard (safetensors with an index).

* ``write_random_checkpoint``: GPTQ (v1, sym) or AWQ (gemm), loaded by gptqmodel like a calibrated one.
* ``write_random_bnb4_checkpoint``: bitsandbytes nf4/fp4, pre-quantized (the layout ``save_pretrained`` writes
  for a 4-bit model, as in the hub's ``*-bnb-4bit`` checkpoints), loaded by transformers without quantizing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .atomic_dir import building

RANDOM_MARKER = "benchmark_random_weights.json"     # written by benchmarks/random_weights.py
RANDOM_SHARD_BYTES = 4 << 30    # random checkpoints are written in safetensors shards of about this size
RANDOM_CHECKPOINT_FORMAT = 2     # 2: AWQ checkpoints carry the activation scales of ungated MLPs (1 left them out)
WEIGHT_STD = 0.02               # the init's spread, which the codes' scales reproduce


def is_random_weights(folder: str) -> bool:
    return (Path(folder) / RANDOM_MARKER).is_file()


def is_skeleton(folder: str) -> bool:
    """A random model folder without the decoder's linear weights: the random 4-bit writers fill them in, a 16-bit
    load leaves them to transformers' initialization (``variants.SKELETON_16BIT_NOTE``)."""
    marker = Path(folder) / RANDOM_MARKER
    return marker.is_file() and bool(json.loads(marker.read_text()).get("skeleton"))


def decoder_linears(model) -> dict:
    """The linear layers inside the decoder's layer list (what GPTQ/AWQ quantize), by module name."""
    import torch
    prefix = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")}


def awq_activation_scales(skeleton, model_type: str) -> dict:
    """The ``<mlp>.act.scales`` an AWQ checkpoint of an ungated-MLP model carries (GPT-NeoX, Falcon, GPT-J,
    BLOOM, ...: AWQ folds its MLP scale into the activation, which then divides by it). All ones: no folded scale.
    Left out, the loader leaves them uninitialised and the model divides by zeros (NaN at the first token)."""
    import torch
    from transformers.integrations.awq import AWQ_SCALES_MAPPINGS

    mapping = AWQ_SCALES_MAPPINGS.get(model_type)
    if mapping is None:
        return {}
    scales = {}
    for name, module in skeleton.named_modules():
        before = getattr(module, mapping["layer_before_act"], None)
        if hasattr(module, mapping["act"]) and isinstance(before, torch.nn.Linear):
            scales[f"{name}.{mapping['act']}.scales"] = torch.ones(before.out_features, dtype=torch.float16)
    return scales


def _meta_model(src: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = decoder_linears(model)
    if not linears:
        raise ValueError(f"{src}: no linear layers in the decoder's layer list")
    return config, model, linears


def write_random_checkpoint(src_dir: str, out_dir: str, method: str, bits: int = 4, group_size: int = 128,
                            progress=None, shard_bytes: int | None = None) -> None:
    """A GPTQ (v1, sym) or AWQ (gemm) checkpoint with the tensors a calibrated one would have, filled with random
    4-bit codes, written in seconds instead of calibrating a model whose weights are noise anyway. Written shard by
    shard (``shard_bytes``), so a 72B shape's ~40 GB of codes never sit in memory at once."""
    import torch

    if method not in ("gptq", "awq") or bits != 4:
        raise ValueError(f"random {method} checkpoints are 4-bit GPTQ or AWQ only (asked: {bits}-bit {method})")
    progress = progress or (lambda f, m: None)
    src = Path(src_dir)
    config, skeleton, linears = _meta_model(src)
    gen = torch.Generator().manual_seed(0)
    qcfg = {"quant_method": method, "bits": bits, "group_size": group_size, "desc_act": False,
            "pack_dtype": "int32", "lm_head": False}
    qcfg.update({"sym": True, "format": "gptq", "checkpoint_format": "gptq"} if method == "gptq" else
                {"zero_point": True, "version": "gemm", "format": "gemm", "checkpoint_format": "gemm"})
    codes_std = 4.6                                   # std of (q - 8) for q uniform in 0..15
    with building(Path(out_dir)) as tmp:
        shards = _ShardWriter(tmp, shard_bytes or RANDOM_SHARD_BYTES)
        for i, (name, lin) in enumerate(linears.items()):
            k, n = lin.in_features, lin.out_features
            if k % group_size or n % 8 or k % 8:
                raise ValueError(f"{name}: shape {k}×{n} does not fit group size {group_size}")
            groups = k // group_size
            scales = torch.full((groups, n), WEIGHT_STD / codes_std, dtype=torch.float16)
            if method == "gptq":
                shards.add(f"{name}.qweight", torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), dtype=torch.int32,
                                                            generator=gen))
                shards.add(f"{name}.qzeros", torch.full((groups, n // 8), 0x77777777, dtype=torch.int32))  # v1: z-1
                shards.add(f"{name}.g_idx", torch.arange(k, dtype=torch.int32) // group_size)
                shards.add(f"{name}.scales", scales)
            else:
                shards.add(f"{name}.qweight", torch.randint(-2 ** 31, 2 ** 31 - 1, (k, n // 8), dtype=torch.int32,
                                                            generator=gen))
                shards.add(f"{name}.qzeros", torch.full((groups, n // 8), -0x77777778, dtype=torch.int32))  # 8s
                shards.add(f"{name}.scales", scales.to(torch.bfloat16))
            if lin.bias is not None:
                shards.add(f"{name}.bias", torch.zeros(n, dtype=torch.float16))
            _report(progress, method, i, len(linears), shards)
        if method == "awq":
            for key, t in awq_activation_scales(skeleton, config.model_type).items():
                shards.add(key, t)
        _finish(src, tmp, shards, linears, qcfg, progress, method)
        (tmp / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    progress(1.0, f"random {method} checkpoint ready")


def write_random_bnb4_checkpoint(src_dir: str, out_dir: str, quant_type: str = "nf4", compute_dtype=None,
                                 double_quant: bool = False, blocksize: int = 64, progress=None,
                                 shard_bytes: int | None = None) -> None:
    """A pre-quantized bitsandbytes 4-bit checkpoint (``quant_type`` nf4 or fp4) of ``src_dir``'s shapes: for each
    decoder linear layer the packed codes (random bytes: two 4-bit codes each), one absmax per block of
    ``blocksize`` weights (nested-quantized with ``double_quant``, as bitsandbytes does it) and the packed
    quant state, under the keys a 4-bit ``save_pretrained`` writes. Nothing is quantized: the absmax is the
    largest |w| of a block of normal weights of std 0.02 (about 2.4 σ for 64)."""
    import torch
    from bitsandbytes.functional import QuantState, get_4bit_type, quantize_blockwise
    from transformers import BitsAndBytesConfig

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"random bitsandbytes checkpoints are nf4 or fp4 (asked: {quant_type})")
    progress = progress or (lambda f, m: None)
    src = Path(src_dir)
    _config, _skeleton, linears = _meta_model(src)
    dtype = compute_dtype or torch.bfloat16
    code = get_4bit_type(quant_type, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with building(Path(out_dir)) as tmp:
        shards = _ShardWriter(tmp, shard_bytes or RANDOM_SHARD_BYTES)
        for i, (name, lin) in enumerate(linears.items()):
            k, n = lin.in_features, lin.out_features
            count = k * n
            if count % blocksize or count % 2:
                raise ValueError(f"{name}: {n}×{k} weights are not a whole number of {blocksize}-blocks")
            absmax = torch.full((count // blocksize,), 2.4 * WEIGHT_STD, dtype=torch.float32)
            if double_quant:
                offset = absmax.mean()
                qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)
                state = QuantState(absmax=qabsmax, shape=torch.Size([n, k]), dtype=dtype, blocksize=blocksize,
                                   code=code, quant_type=quant_type, offset=offset, state2=state2)
            else:
                state = QuantState(absmax=absmax, shape=torch.Size([n, k]), dtype=dtype, blocksize=blocksize,
                                   code=code, quant_type=quant_type)
            shards.add(f"{name}.weight", torch.randint(0, 256, (count // 2, 1), dtype=torch.uint8, generator=gen))
            for key, t in state.as_dict(packed=True).items():   # the code table is one tensor: a copy per layer
                shards.add(f"{name}.weight.{key}", t.clone())
            if lin.bias is not None:
                shards.add(f"{name}.bias", torch.zeros(n, dtype=dtype))
            _report(progress, quant_type, i, len(linears), shards)
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=double_quant).to_dict()
        _finish(src, tmp, shards, linears, qcfg, progress, quant_type)
    progress(1.0, f"random {quant_type} checkpoint ready")


def _report(progress, what: str, i: int, total: int, shards: _ShardWriter) -> None:
    if i % 16 == 0:
        progress(0.7 * i / total, f"random {what} codes: {i}/{total} layers ({shards.written} shards written)")


def _finish(src: Path, tmp: Path, shards: _ShardWriter, linears: dict, qcfg: dict, progress, what: str) -> None:
    """Copy the tensors kept in 16 bits (all but the decoder's linear weights), the config with its
    ``quantization_config``, the tokenizer and other small files from ``src``."""
    from safetensors import safe_open

    progress(0.75, f"copying the 16-bit tensors into the random {what} checkpoint")
    quantized = {f"{n}.weight" for n in linears} | {f"{n}.bias" for n in linears}
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                if key not in quantized:
                    shards.add(key, st.get_tensor(key))
    shards.close()
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for extra in src.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name != "config.json" \
                and not extra.name.endswith(".index.json"):
            shutil.copy2(extra, tmp / extra.name)


class _ShardWriter:
    """Safetensors shards of at most ``limit`` bytes each, and their ``model.safetensors.index.json`` (a single
    ``model.safetensors`` when everything fits one shard)."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.pending: dict = {}
        self.pending_bytes = self.total = self.written = 0
        self.weight_map: dict[str, str] = {}

    def add(self, key: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.limit:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file
        self.written += 1
        name = f"model-{self.written:05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.weight_map.update({k: name for k in self.pending})
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.written == 0:            # one shard: the plain single-file layout
            from safetensors.torch import save_file
            save_file(self.pending, str(self.folder / "model.safetensors"), metadata={"format": "pt"})
            return
        if self.pending:
            self._flush()
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}, indent=1))
