"""What a sweep started from the app's Benchmark tab may ask for, checked before anything runs (each check raises
ValueError with one line for the tab to show): model names that can be found (``check_model_names``), and in
shared mode (strangers) the shipped architectures, the host's models and ``SHARED_CAPS``."""
from __future__ import annotations

from playground.catalog import CATALOG, resolve
from playground.errors import PlaygroundError

# Shared mode (strangers): what one sweep may ask for
SHARED_CAPS = {"repeats": 5, "warmup": 3, "batch_sizes": 16, "prompt_tokens": 4096, "new_tokens": 512,
               "combinations": 24}


def check_shared_models(ctx, models, memory_cap_gb: float) -> None:
    """A stranger's sweep (shared mode) names the shipped architectures and the host's models only, and no
    random-weight model bigger than the memory cap; checked before anything reads a file. Raises ValueError."""
    from .random_weights import estimated_params, list_architectures, load_architecture
    shipped = set(list_architectures())
    for name in models or []:
        name = str(name).strip()
        if name.startswith("random:"):
            arch = name[len("random:"):]
            if arch not in shipped:
                raise ValueError(f"{name[:60]}: on this shared app random-weight models are the shipped "
                                 f"architectures only ({', '.join(sorted(shipped))})")
            size_gb = 2 * estimated_params(load_architecture(arch)["config"]) / 2 ** 30
            if size_gb > memory_cap_gb:
                raise ValueError(f"{name}: about {size_gb:.0f} GB in bf16, over this sweep's memory cap of "
                                 f"{memory_cap_gb:.0f} GB")
        else:
            try:
                ctx.policy.model_name(name)
            except PlaygroundError as exc:
                raise ValueError(str(exc)) from None


def check_model_names(models) -> None:
    """Every real-weight model of a sweep can be found before any worker starts (was: an unknown name ran a worker
    that ended in a three-level chained exception). Catalog keys, folders with a config.json, and Hugging Face ids
    in the local cache or on the reachable hub pass; ``random:`` names are ``RunConfig``'s to check.
    Raises ValueError with one line."""
    for name in models or []:
        name = str(name).strip()
        if not name or name in CATALOG or name.startswith("random:"):
            continue                                # an empty name: RunConfig says so
        try:
            source = resolve(name)                  # not a catalog key: no conversion, no network
        except PlaygroundError as exc:
            raise ValueError(str(exc)) from None
        if not source.local:
            _check_hub_id(name)


def _check_hub_id(name: str) -> None:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            return
    except HFValidationError as exc:
        raise ValueError(f"{name[:80]}: not a catalog key, a model folder or a Hugging Face id "
                         f"({str(exc).splitlines()[0][:160]})") from None
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{name} is not in the local Hugging Face cache and the hub cannot be reached "
                         f"(HF_HUB_OFFLINE=1): download it on a machine with internet or pass a local folder")
    try:
        huggingface_hub.model_info(name, timeout=10)
    except huggingface_hub.errors.GatedRepoError:
        return                                  # there, behind a licence: the worker says what to do
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise ValueError(f"{name}: no such model on the Hugging Face hub (check the spelling)") from None
    except Exception as exc:  # noqa: BLE001 - no answer from the hub: the worker could not download it either
        raise ValueError(f"{name} is not in the local Hugging Face cache and the hub cannot be reached "
                         f"({type(exc).__name__})") from None


def check_shared_caps(cfg) -> None:
    """A stranger's sweep stays within ``SHARED_CAPS``. Raises ValueError."""
    for key in ("repeats", "warmup"):
        if getattr(cfg, key) > SHARED_CAPS[key]:
            raise ValueError(f"{key}: at most {SHARED_CAPS[key]} on this shared app")
    for key in ("batch_sizes", "prompt_tokens", "new_tokens"):
        if max(getattr(cfg, key)) > SHARED_CAPS[key]:
            raise ValueError(f"{key.replace('_', ' ')}: at most {SHARED_CAPS[key]} on this shared app")
    combos = len(cfg.models) * len(cfg.variants) * len(cfg.batch_sizes) * len(cfg.prompt_tokens) * \
        len(cfg.new_tokens)
    if combos > SHARED_CAPS["combinations"]:
        raise ValueError(f"{combos} combinations: at most {SHARED_CAPS['combinations']} per sweep on this "
                         f"shared app")
