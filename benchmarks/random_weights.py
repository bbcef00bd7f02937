"""Architecture-only models: a public config with random bf16 weights, for speed/memory runs of big shapes.

The model is built directly on the target device (``with torch.device(...)``: no slow CPU init for a GPU run),
saved once with a word-level tokenizer of the right vocabulary size to ``cache_root()/random/<name>``, and from
then on loaded like any local folder, so every variant (bitsandbytes, GPTQ, AWQ) can read it. Answers of such
a model are noise: every row it produces says ``random_weights=True``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from playground.atomic_dir import building
from playground.random_checkpoints import RANDOM_MARKER as MARKER
from playground.random_checkpoints import decoder_linears

ARCH_DIR = Path(__file__).parent / "architectures"


def list_architectures() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


def load_architecture(name: str) -> dict:
    """The architecture file's content: ``{"name", "source", "config": {...}}``. ``name`` may be a path."""
    path = Path(name) if name.endswith(".json") else ARCH_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no architecture file {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    cfg = data.get("config")
    if not isinstance(cfg, dict) or "model_type" not in cfg or "vocab_size" not in cfg:
        raise ValueError(f"{path} needs a \"config\" object with at least model_type and vocab_size")
    data.setdefault("name", path.stem)
    return data


def estimated_params(cfg: dict) -> int:
    """About how many parameters a decoder of this config has (embeddings, attention, MLP; norms ignored): what
    building a random model of it will write and load, before anything is built."""
    h, layers = int(cfg.get("hidden_size", 0)), int(cfg.get("num_hidden_layers", 0))
    inter = int(cfg.get("intermediate_size") or 4 * h)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    kv_dim = h // heads * kv if heads else h
    gated = cfg.get("model_type") not in ("gpt_neox", "gpt2", "gptj", "opt", "bloom", "falcon")
    embeddings = int(cfg.get("vocab_size", 0)) * h * (1 if cfg.get("tie_word_embeddings") else 2)
    per_layer = h * (2 * h + 2 * kv_dim) + (3 if gated else 2) * h * inter
    return embeddings + layers * per_layer


def config_digest(arch: dict) -> str:
    return hashlib.sha256(json.dumps(arch["config"], sort_keys=True).encode()).hexdigest()[:12]


def random_model_dir(name: str) -> Path:
    from playground.catalog import cache_root
    return cache_root() / "random" / Path(name).stem


def make_tokenizer(cfg: dict, text: str):
    """A word-level tokenizer with exactly ``vocab_size`` entries: the words of the prompt text get real ids
    (so prompts are varied token sequences), special tokens sit at the config's bos/eos ids, fillers pad the rest."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    size = int(cfg["vocab_size"])
    id_to_tok: dict[int, str] = {}
    bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    for tid, tok in ((bos, "<s>"), (eos, "</s>")):
        if isinstance(tid, int) and 0 <= tid < size and tid not in id_to_tok:
            id_to_tok[tid] = tok
    free = (i for i in range(size) if i not in id_to_tok)
    unk_id = next(free)
    id_to_tok[unk_id] = "<unk>"
    pre = pre_tokenizers.Whitespace()
    words = list(dict.fromkeys(w for w, _ in pre.pre_tokenize_str(text)))
    for w, tid in zip(words, free):
        id_to_tok[tid] = w
    for tid in range(size):
        id_to_tok.setdefault(tid, f"<w{tid}>")
    tok = Tokenizer(models.WordLevel({t: i for i, t in id_to_tok.items()}, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    special = {k: id_to_tok[t] for k, t in (("bos_token", bos), ("eos_token", eos)) if isinstance(t, int) and t < size}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)
    fast.pad_token = fast.eos_token or "<unk>"
    return fast


SKELETON_SUFFIX = "-4bit-skeleton"
# variants that read a skeleton instead of a whole random model of a big shape: the 4-bit ones write their codes
# from the shapes; the 16-bit ones load it as it is, and transformers initializes the missing decoder linears (random,
# the config's initializer_range) on the devices device_map gives them, so 145 GB are never written to a disk
SKELETON_VARIANTS = ("gptq", "awq", "nf4", "fp4", "bf16", "fp16")


def skeleton_above_gb() -> float:
    """bf16 size above which a run of a ``SKELETON_VARIANTS`` variant builds a skeleton instead of the whole random
    model (the Qwen2-72B shape: 145 GB of bf16 fits neither one GPU, nor the GPU machine's RAM or disk).
    ``PLAYGROUND_SKELETON_ABOVE_GB`` moves it (0: always, as the CPU tests do with a tiny shape)."""
    import os
    return float(os.environ.get("PLAYGROUND_SKELETON_ABOVE_GB", "60"))


def wants_skeleton(arch_name: str, variant: str) -> bool:
    if variant not in SKELETON_VARIANTS:
        return False
    return estimated_params(load_architecture(arch_name)["config"]) * 2 / 1e9 > skeleton_above_gb()


def ensure_random_model(arch_name: str, device: str = "cpu", progress=None, skeleton: bool = False
                        ) -> tuple[str, float]:
    """Folder of the random-weight model (built on first use); returns (path, seconds spent building).

    ``skeleton``: a folder with the config, the tokenizer and only the tensors a 4-bit checkpoint keeps in 16 bits
    (embeddings, norms, lm_head), made one tensor at a time on the CPU; the decoder's linear layers are absent.
    The random 4-bit writers (``playground.random_checkpoints``: GPTQ/AWQ and bitsandbytes codes of the real
    shapes) fill them in; a 16-bit load leaves them to transformers' initialization (``SKELETON_VARIANTS``)."""
    from filelock import FileLock

    arch = load_architecture(arch_name)
    target = random_model_dir(arch["name"] + (SKELETON_SUFFIX if skeleton else ""))
    digest = config_digest(arch) + ("-skeleton" if skeleton else "")

    def ready() -> bool:
        marker = target / MARKER
        return marker.exists() and json.loads(marker.read_text()).get("config_digest") == digest

    if ready():
        return str(target), 0.0
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if ready():
            return str(target), 0.0
        t0 = time.perf_counter()
        (_build_skeleton if skeleton else _build)(arch, target, device, digest, progress)
        return str(target), time.perf_counter() - t0


def _build_skeleton(arch: dict, target: Path, device: str, digest: str, progress) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from .generation import load_prompt_text

    progress = progress or (lambda f, m: None)
    cfg_dict = dict(arch["config"])
    config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    linears = decoder_linears(model)
    quantized = {f"{n}.weight" for n in linears} | {f"{n}.bias" for n in linears}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for key, meta in model.state_dict().items():
        if key in quantized:
            continue
        if key.endswith("norm.weight") or "layernorm" in key or key.endswith("ln_f.weight"):
            tensors[key] = torch.ones(meta.shape, dtype=torch.bfloat16)
        elif key.endswith(".bias"):
            tensors[key] = torch.zeros(meta.shape, dtype=torch.bfloat16)
        else:
            tensors[key] = (torch.randn(meta.shape, generator=gen) * 0.02).to(torch.bfloat16)
    progress(0.5, f"saving the {arch['name']} skeleton ({sum(t.numel() for t in tensors.values()) / 1e9:.1f}B "
                  "16-bit parameters; the decoder's linear layers are left to the 4-bit writer or the load)")
    with building(target) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        make_tokenizer(arch["config"], load_prompt_text()[0]).save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"architecture": arch["name"], "source": arch.get("source"),
                                              "config_digest": digest, "random_weights": True,
                                              "skeleton": "no decoder linear weights: the 4-bit writers fill "
                                                          "them, a 16-bit load initializes them"}, indent=2))
    progress(1.0, f"{arch['name']} skeleton ready")


def _build(arch: dict, target: Path, device: str, digest: str, progress) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .generation import load_prompt_text

    progress = progress or (lambda f, m: None)
    cfg_dict = dict(arch["config"])
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    build_device = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) \
        else "cpu"
    if device.startswith("cuda:"):
        build_device = device
    progress(0.1, f"building {arch['name']} with random bf16 weights on {build_device} (one time)")
    torch.manual_seed(0)
    with torch.device(build_device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    try:
        with building(target) as tmp:
            progress(0.5, f"saving {arch['name']} to {target}")
            model.save_pretrained(tmp)
            del model
            tokenizer = make_tokenizer(arch["config"], load_prompt_text()[0])
            tokenizer.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"architecture": arch["name"], "source": arch.get("source"),
                                                  "config_digest": digest, "random_weights": True}, indent=2))
    finally:
        if build_device.startswith("cuda"):
            torch.cuda.empty_cache()
    progress(1.0, f"{arch['name']} ready")
