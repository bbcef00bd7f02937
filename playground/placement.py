"""A model over several devices (``--max-memory``, ``device_map="auto"``): the user's caps, the placement
transformers will make from them (worked out on the meta device before a byte is read), and its checks.

``device_map="auto"`` fills the GPUs in order, balanced (transformers' ``get_balanced_memory``), then the CPU, then
the disk, silently. A user who meant "spread it over my two GPUs" finds out from a reply at a few tokens a minute.
So before loading a 16-bit model the manager asks ``plan_placement`` what transformers would do with these caps
(the same two functions transformers calls, on an empty model), refuses a plan that puts layers on the disk with
what it would take, and says so in the load's notes when layers would wait in CPU memory (accelerate copies
them to the GPU for every forward). After the load,
``manager.weights_by_device`` says where every parameter went (the status line and the benchmark rows show it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import InvalidParameterError, MemoryBudgetError
from .memory import GB

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """``"70GiB"``, ``"80 GB"``, ``"500MB"``, ``"1024"`` (bytes) → bytes."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InvalidParameterError(f"{what}: {text!r} is not a size; write it like 70GiB, 80GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """``"0=70GiB,1=70GiB,cpu=100GiB"`` (or a dict) → ``{0: bytes, 1: bytes, "cpu": bytes}`` for ``max_memory``.

    Keys: a GPU index (``0``, ``cuda:1``), ``cpu`` or ``disk``; each at most once. None or "" → None."""
    if spec is None or spec == "" or spec == {}:
        return None
    items = spec.items() if isinstance(spec, dict) else [_split_item(part) for part in str(spec).split(",")]
    caps: dict = {}
    for key, value in items:
        dev = _device_key(key)
        if dev in caps:
            raise InvalidParameterError(f"--max-memory: {key!r} is given twice")
        size = value if isinstance(value, int) else parse_size(value, f"--max-memory {key}")
        if size <= 0:
            raise InvalidParameterError(f"--max-memory: {key}={value!r} must be more than 0")
        caps[dev] = size
    if not any(isinstance(k, int) for k in caps) and "cpu" not in caps:
        raise InvalidParameterError("--max-memory needs at least one GPU (0=70GiB) or cpu=…")
    return caps


def spread_option(text: str | None) -> tuple[bool, dict | None]:
    """The command lines' ``--max-memory``: None/"" → (False, None), one device as before; "auto" → (True, None),
    ``device_map="auto"`` over every GPU with transformers' own caps; "0=70GiB,1=70GiB" → (True, those caps)."""
    if text is None or str(text).strip() == "":
        return False, None
    if str(text).strip().lower() == "auto":
        return True, None
    return True, parse_max_memory(text)


def manager_device(device: str | None, max_memory: str | None) -> tuple[str | None, dict | None]:
    """``--device`` and ``--max-memory`` of a command line → ``ModelManager(device=…, max_memory=…)``: "auto" (the
    device_map placement) when ``--max-memory`` is given, else the device as asked (None: cuda if present)."""
    from .errors import UsageError
    spread, caps = spread_option(max_memory)
    dev = None if device in (None, "", "auto") else device
    if not spread:
        return dev, None
    if dev is not None and not dev.startswith("cuda"):
        raise UsageError(f"--max-memory places models over GPUs (device_map=\"auto\"); --device {dev} contradicts it")
    return "auto", caps


MAX_MEMORY_HELP = ("place each model over several devices with device_map=\"auto\": 'auto' spreads it over every "
                   "GPU with transformers' caps; '0=70GiB,1=70GiB[,cpu=100GiB]' caps each device (layers past "
                   "the GPUs' caps wait in CPU memory only if cpu= is given; a plan that needs the disk is refused)")


def _split_item(part: str) -> tuple[str, str]:
    key, sep, value = part.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise InvalidParameterError(f"--max-memory: {part.strip()!r} is not DEVICE=SIZE (for example 0=70GiB,1=70GiB)")
    return key.strip(), value.strip()


def _device_key(key) -> int | str:
    if isinstance(key, int) and key >= 0:
        return key
    text = str(key).strip().lower()
    if text in ("cpu", "disk"):
        return text
    m = re.fullmatch(r"(?:cuda:)?([0-9]+)", text)
    if not m:
        raise InvalidParameterError(f"--max-memory: unknown device {key!r}; use a GPU index (0, 1, cuda:1), cpu "
                                    f"or disk")
    return int(m.group(1))


def device_name(dev) -> str:
    """accelerate's device keys (0, "cpu", "disk", torch.device) → "cuda:0", "cpu", "disk"."""
    if isinstance(dev, int):
        return f"cuda:{dev}"
    text = str(dev)
    return "cuda:0" if text == "cuda" else text


def offloaded_to(tensor_name: str, device_map: dict) -> str:
    """Where an offloaded (meta-device) tensor's values wait: the ``device_map`` entry of its innermost module
    ("cpu" or "disk"); "disk" when the map does not say."""
    module = tensor_name
    while module:
        module = module.rpartition(".")[0]
        if module in device_map or (module == "" and "" in device_map):
            where = device_name(device_map[module])
            return where if where in ("cpu", "disk") else "disk"
    return "disk"


def check_gpus_exist(caps: dict | None, n_gpus: int) -> None:
    """A cap for a GPU this machine does not have is a typo, not something to ignore."""
    missing = sorted(k for k in (caps or {}) if isinstance(k, int) and k >= n_gpus)
    if missing:
        have = f"GPUs 0-{n_gpus - 1}" if n_gpus > 1 else ("GPU 0" if n_gpus else "no GPU")
        gpus = ", ".join(map(str, missing))
        raise InvalidParameterError(f"--max-memory names GPU {gpus} but this machine has {have}")


@dataclass
class PlacementPlan:
    """Where ``device_map="auto"`` would put each module, and the bytes that makes per device."""
    device_map: dict
    bytes_by_device: dict[str, int]
    total_bytes: int
    layers_by_device: dict[str, int] = field(default_factory=dict)

    @property
    def offloaded_bytes(self) -> dict[str, int]:
        return {d: b for d, b in self.bytes_by_device.items() if d in ("cpu", "disk") and b}

    def summary(self) -> str:
        return split_text(self.bytes_by_device, self.layers_by_device)


def split_text(bytes_by_device: dict[str, int], layers: dict[str, int] | None = None) -> str:
    """``cuda:0 72.1 GB (41 layers) + cuda:1 73.3 GB (39 layers)``, GPUs first."""
    order = sorted(bytes_by_device, key=lambda d: (not d.startswith("cuda"), d))
    parts = []
    for d in order:
        n = (layers or {}).get(d)
        parts.append(f"{d} {bytes_by_device[d] / GB:.1f} GB" + (f" ({n} layers)" if n else ""))
    return " + ".join(parts)


def plan_placement(config, max_memory: dict | None, dtype=None) -> PlacementPlan:
    """What ``from_pretrained(device_map="auto", max_memory=...)`` will do with a 16-bit (or fp32) model of
    ``config``: transformers' own ``_get_device_map`` on an empty (meta-device) model. Works without GPUs (the
    caps name the devices), which is how the CPU tests check it."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.integrations.accelerate import _get_device_map, compute_module_sizes
    dtype = dtype or torch.bfloat16
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    device_map = _get_device_map(model, "auto", dict(max_memory) if max_memory else None, None)
    sizes, _ = compute_module_sizes(model)
    bytes_by_device: dict[str, int] = {}
    layers_by_device: dict[str, int] = {}
    layer = re.compile(r"(^|\.)layers\.[0-9]+$")
    for module, dev in device_map.items():
        name = device_name(dev)
        bytes_by_device[name] = bytes_by_device.get(name, 0) + sizes.get(module, 0)
        if layer.search(module):
            layers_by_device[name] = layers_by_device.get(name, 0) + 1
    return PlacementPlan(device_map, bytes_by_device, sizes[""], layers_by_device)


def check_plan(plan: PlacementPlan, label: str) -> list[str]:
    """Refuse a plan with layers on the disk (a reply would take minutes); a note for layers on the CPU."""
    off = plan.offloaded_bytes
    gpus = sum(b for d, b in plan.bytes_by_device.items() if d.startswith("cuda"))
    if "disk" in off:
        raise MemoryBudgetError(
            f"{label} needs about {plan.total_bytes / GB:.1f} GB; the devices and caps offered hold "
            f"{(plan.total_bytes - off['disk']) / GB:.1f} GB ({plan.summary()}), so "
            f"{plan.layers_by_device.get('disk', 0)} layers would be read from the disk for every token. "
            f"Raise --max-memory, add a GPU, or choose a 4-bit variant (about a quarter of the size)")
    if "cpu" in off and gpus:
        return [f"{plan.layers_by_device.get('cpu', 0)} layers ({off['cpu'] / GB:.1f} GB) do not fit the GPUs' caps: "
                f"they wait in CPU memory and are copied to the GPU for every token, so replies will be much slower "
                f"({plan.summary()})"]
    return []


def preflight(path: str, dtype, max_memory: dict | None, label: str, trust_remote_code: bool = False) -> list[str]:
    """Before ``from_pretrained(device_map="auto")`` of the 16-bit folder ``path``: the plan, checked
    (``check_plan``), as notes for the load (the split, and any CPU offload). Raises when layers would go to the
    disk or a cap names a missing GPU. A folder whose config cannot be read here (custom code not trusted, a
    pre-quantized checkpoint) is left to transformers: no notes."""
    import torch
    from transformers import AutoConfig
    check_gpus_exist(max_memory, torch.cuda.device_count())
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError):
        return []
    if getattr(config, "quantization_config", None):
        return []
    plan = plan_placement(config, max_memory, dtype)
    notes = check_plan(plan, label)
    if len([d for d in plan.bytes_by_device if d.startswith("cuda")]) > 1 and not notes:
        notes.append(f"placed over {plan.summary()}")
    return notes
