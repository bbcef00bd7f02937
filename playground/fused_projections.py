"""Fused q/k/v and gate/up projections for the fast decoder: one matrix product where transformers makes three
(or two), at no extra memory.

At batch 1 a decode step is a chain of matrix-vector products, each bound by reading its weight; small products
(the k/v projections of a grouped-query model) reach a far lower fraction of the memory bandwidth than large
ones (H200 profile of the Mistral-7B shape: ~38% on k/v, ~90% on down_proj). gpt-fast stores ``wqkv`` as one
weight for that reason. Here the weights of a decoder layer's ``q_proj``/``k_proj``/``v_proj`` (and of its MLP's
``gate_proj``/``up_proj``) are copied once into one tensor, and each original Linear's weight (and bias) becomes a
*view* into it: the model holds the same bytes as before, and its parameters, ``state_dict`` and weight count are
unchanged.

The projections are replaced by ``FusedLinearPart`` modules (``nn.Linear`` subclasses holding those views). While
the switch of their ``Fusion`` is off they are exactly the Linear they replaced (``F.linear`` over the same
values), so eager decoding and transformers' own ``generate`` (the benchmark's peer row) are untouched. While it
is on (the fast decoder's prefill and its compiled step), the first part of a group computes the whole product
once and keeps it with the input it was computed for; the other parts hand on their slice when they are called
with that same tensor (``is``), and compute their own slice otherwise, so a model that feeds them different
inputs still gets the right answer. transformers' attention and MLP code run unchanged on the slices.

Only plain ``nn.Linear`` layers of one dtype and device, without hooks, are fused: quantized layers
(bitsandbytes, gptqmodel, tinygemm, torchao tensor subclasses) and offloaded ones are left alone. The fused
tensor belongs to the device the model is on: fuse after placing the model, never move it afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
GROUPS = {"qkv": QKV, "gate/up": GATE_UP}
ATTRIBUTE = "_pg_fused_projections"      # the model's Fusion, so a second decoder on the model reuses it


class FusionSwitch:
    """On while the fast decoder runs the model; off, every part computes exactly what its Linear did."""

    def __init__(self):
        self.on = False


class SharedProduct:
    """One group's fused weight [sum of outputs, in] (and bias), and its last product with the input it was
    computed for (cleared by the last part that takes its slice)."""

    def __init__(self, switch: FusionSwitch, weight: torch.Tensor, bias: torch.Tensor | None):
        self.switch, self.weight, self.bias = switch, weight, bias
        self.x = None
        self.y = None


class FusedLinearPart(nn.Linear):
    """One projection of a fused group: ``weight``/``bias`` are views into the group's fused tensors."""

    def __init__(self, shared: SharedProduct, original: nn.Linear, start: int, leader: bool, last: bool):
        nn.Module.__init__(self)             # no new weight: the original's view is taken over
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = original.weight
        self.bias = original.bias
        self.shared, self.start, self.stop = shared, start, start + original.out_features
        self.leader, self.last = leader, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shared
        if not s.switch.on:
            return F.linear(x, self.weight, self.bias)
        if self.leader:
            y = F.linear(x, s.weight, s.bias)
            s.x, s.y = x, y
            return y[..., self.start:self.stop]
        if s.x is x:
            part = s.y[..., self.start:self.stop]
            if self.last:
                s.x = s.y = None
            return part
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fused rows {self.start}:{self.stop}"


@dataclass
class Fusion:
    """What ``fuse_projections`` did to a model: the switch, and how many groups of each kind it fused."""
    switch: FusionSwitch = field(default_factory=FusionSwitch)
    counts: dict = field(default_factory=dict)     # "qkv" / "gate/up" -> groups fused
    skipped: list = field(default_factory=list)    # "<module>: why", for groups found but left alone

    @property
    def label(self) -> str:
        """"fused qkv+gate/up" (what fused), "" when nothing was."""
        kinds = [k for k in GROUPS if self.counts.get(k)]
        return ("fused " + "+".join(kinds)) if kinds else ""

    @property
    def groups(self) -> int:
        return sum(self.counts.values())


def unfusable_reason(linears: list) -> str | None:
    """Why these projections cannot share one weight, or None."""
    if not all(type(m) is nn.Linear for m in linears):        # noqa: E721 - subclasses are quantized layers
        return "not plain nn.Linear (" + ", ".join(sorted({type(m).__name__ for m in linears})) + ")"
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    weights = [m.weight for m in linears]
    if any(is_traceable_wrapper_subclass(w) or type(w.data) is not torch.Tensor for w in weights):
        return "quantized weights (a tensor subclass)"
    if any(not w.is_floating_point() or w.device.type == "meta" for w in weights):
        return "weights not floating point or not materialised"
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return "weights of different dtypes, devices or input sizes"
    if len({m.bias is None for m in linears}) != 1:
        return "some with a bias, some without"
    if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in linears):
        return "hooked (accelerate offload or another wrapper)"
    return None


@torch.no_grad()
def _fuse_group(parent: nn.Module, names: tuple[str, ...], switch: FusionSwitch) -> None:
    linears = [getattr(parent, n) for n in names]
    weight = torch.cat([m.weight.detach() for m in linears], dim=0)
    bias = torch.cat([m.bias.detach() for m in linears]) if linears[0].bias is not None else None
    shared = SharedProduct(switch, weight, bias)
    start = 0
    for i, (name, m) in enumerate(zip(names, linears)):
        stop = start + m.out_features
        m.weight = nn.Parameter(weight[start:stop], requires_grad=False)      # the old weight is freed here
        if bias is not None:
            m.bias = nn.Parameter(bias[start:stop], requires_grad=False)
        setattr(parent, name, FusedLinearPart(shared, m, start, leader=i == 0, last=i == len(names) - 1))
        start = stop
    if weight.is_cuda:
        torch._dynamo.mark_static_address(weight)   # a weight, not an input: CUDA graphs must not copy it per replay
        if bias is not None:
            torch._dynamo.mark_static_address(bias)


def fuse_projections(model: nn.Module) -> Fusion:
    """Fuse every decoder layer's q/k/v and gate/up projections that can be (idempotent: a model fused before
    returns its Fusion). Each group is copied into its fused tensor and its old weights freed before the next, so
    at most one group's weights exist twice at any time."""
    done = getattr(model, ATTRIBUTE, None)
    if done is not None:
        return done
    fusion = Fusion()
    for parent_name, parent in list(model.named_modules()):
        for kind, names in GROUPS.items():
            parts = [getattr(parent, n, None) for n in names]
            if not all(isinstance(p, nn.Module) for p in parts) or any(isinstance(p, FusedLinearPart) for p in parts):
                continue
            reason = unfusable_reason(parts)
            if reason:
                fusion.skipped.append(f"{parent_name}: {reason}")
                continue
            _fuse_group(parent, names, fusion.switch)
            fusion.counts[kind] = fusion.counts.get(kind, 0) + 1
            if parts[0].weight.is_cuda:
                torch.cuda.empty_cache()      # the old weights' blocks: reserved memory stays at one group's extra
    object.__setattr__(model, ATTRIBUTE, fusion)     # a plain attribute, not a submodule
    return fusion
