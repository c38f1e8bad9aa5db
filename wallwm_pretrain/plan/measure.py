"""One forward of the model on the meta device: its FLOPs and the activations backward keeps.

Why measured rather than written as a formula: the towers' blocks differ (video: self-, text-
and cross-view attention; action: self-, state-, coupling and text attention) and change as the
model grows; a formula per block drifts from the code, a measurement of the code does not.

- FLOPs: torch's ``FlopCounterMode`` over the forward (matmuls, convolutions and attention,
  the CPU flash kernel included via ``model.flops.flop_counter``; elementwise work is not
  counted).
- Activations: autograd's saved-tensor hooks see every tensor the forward keeps for backward.
  Each is counted once per storage (views of one tensor share it), parameters excluded, and
  attributed to the part of the model running when it was saved: ``embed``, ``layer <i>``
  (coupled layer i) or ``head``. Tensors saved inside a module that owns tensor-parallel
  linear layers (attention, FFN) and whose last dimension is not the hidden size are the ones
  tensor parallelism splits over its ranks (heads, FFN width); the rest (residual stream,
  norms, modulation) every TP rank keeps whole (no sequence parallelism).

Attention runs on meta tensors through ATen's math decomposition, which would keep the
[b, heads, sq, sk] score matrix; a GPU runs the fused kernel, which keeps only q, k, v, the
output and the log-sum-exp. :class:`_FusedAttentionOnMeta` routes ``scaled_dot_product_attention``
to the fused kernel's own meta function so the count is what the fused kernel keeps (every
attention core of both towers is the fused one, ``model/attention_core.py``).
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import Denoiser, build_model
from wallwm_pretrain.model.flops import flop_counter
from wallwm_pretrain.model.local_layers import LocalLinear
from wallwm_pretrain.model.pipeline_slice import PipelineSlice


def meta_model(cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None) -> Denoiser:
    """The model ``model.video_tower`` names (or one pipeline rank of it), every tensor on the
    meta device."""
    with torch.device("meta"):
        return build_model(cfg, pipeline_slice)


def meta_batch(cfg: ModelConfig, batch_size: int, steps: int, latent_hw: tuple[int, int] | None = None,
               text_tokens: int = 512) -> Batch:
    """A full-length batch of meta tensors: ``steps`` control steps per sample, longest caption;
    on the Wan path also VAE latents of ``latent_hw`` and ``text_tokens`` text-encoder states."""
    views, b = int(cfg.num_views), batch_size
    with torch.device("meta"):
        common = dict(
            actions=torch.empty(b, steps, int(cfg.action_dim)),
            state=torch.empty(b, int(cfg.state_dim)),
            lengths=torch.full((b,), steps, dtype=torch.long),
            caption=torch.ones(b, cfg.caption_max_bytes + 1, dtype=torch.long),
            remaining=torch.ones(b),
        )
        # the meta batch carries what the named video tower reads (pixel frames, or VAE latents
        # and text states): the plan builds inputs before any model, from the schema alone
        if cfg.video_tower != "wan":
            size = int(cfg.image_size)
            return Batch(frames=torch.empty(b, steps, views, size, size, 3, dtype=torch.uint8), **common)
        if latent_hw is None:
            raise ValueError("the Wan path's plan needs the latent frame size (--latent-size HxW)")
        frames = -(-steps // cfg.frame_stride)
        return Batch(
            frames=torch.empty(b, steps, views, 1, 1, 3, dtype=torch.uint8),  # not read on the Wan path
            latents=torch.empty(b, views, cfg.wan.in_channels, frames, *latent_hw),
            text_states=torch.empty(b, text_tokens, cfg.wan.text_dim),
            text_valid=torch.ones(b, text_tokens, dtype=torch.bool),
            **common,
        )


class _FusedAttentionOnMeta(TorchFunctionMode):
    """``scaled_dot_product_attention`` on meta tensors -> the fused (flash) kernel's meta function."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if mask is not None and mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, bool(kwargs.get("is_causal", False)), attn_mask=mask, scale=kwargs.get("scale")
            )[0]
        return func(*args, **kwargs)


@dataclass
class ForwardMeasure:
    """What one forward of a microbatch costs."""

    flops: int
    """Forward FLOPs of the whole microbatch (training is about 3x)."""
    saved: dict[str, int] = field(default_factory=dict)
    """Bytes kept for backward, by part (``embed``, ``layer <i>``, ``head``)."""
    tp_split: dict[str, int] = field(default_factory=dict)
    """Of ``saved``, the bytes that tensor parallelism divides over its ranks."""
    layer_input: dict[str, dict[int, int]] = field(default_factory=dict)
    """Each coupled layer's input tensors (storage -> bytes): all that ``recompute=full`` keeps
    of it. Layers share some (the caption states, the timestep modulation): see :meth:`kept`."""

    def kept(self, parts: list[str]) -> int:
        """Bytes ``recompute=full`` keeps for these coupled layers (shared inputs once)."""
        union: dict[int, int] = {}
        for part in parts:
            union.update(self.layer_input.get(part, {}))
        return sum(union.values())

    def part_bytes(self, part: str, tp: int) -> float:
        """Bytes one tensor-parallel rank keeps for ``part``."""
        split = self.tp_split.get(part, 0)
        return self.saved.get(part, 0) - split + split / tp


def _tensors(obj):
    """The tensors in a hook's arguments: tensors, tuples and lists of them, dataclasses' fields."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _tp_region(module: nn.Module) -> bool:
    """Whether the module owns tensor-parallel linear layers directly (attention, FFN)."""
    return any(isinstance(child, LocalLinear) for child in module.children())


def measure_forward(model: Denoiser, batch: Batch) -> ForwardMeasure:
    """Run ``model`` (whole, meta device) on ``batch`` and count FLOPs and saved activations."""
    # the residual streams' widths (the Wan tower's and the action tower's): what every TP rank
    # keeps whole
    hidden = model.residual_widths()
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set[int] = set()
    state = {"part": "embed", "tp_depth": 0}
    out = ForwardMeasure(0)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in param_storages or key in seen:
            return t
        seen.add(key)
        nbytes = storage.nbytes()
        part = state["part"]
        out.saved[part] = out.saved.get(part, 0) + nbytes
        if state["tp_depth"] and t.dim() and t.shape[-1] not in hidden:
            out.tp_split[part] = out.tp_split.get(part, 0) + nbytes
        return t

    handles = []
    # what recompute=full keeps of a coupled layer: the tensors it is called with (both towers'
    # streams, conditioning, timestep modulation, rotary tables, masks), by storage, so that a
    # tensor every layer reads (the caption, the per-token modulation) is counted once per pipeline rank
    for name, (first, last) in model.coupled_layers().items():
        part = f"layer {name}"

        def enter(module, args, part=part):
            state["part"] = part
            keep = out.layer_input.setdefault(part, {})
            for t in _tensors(args):
                keep[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()

        handles.append(first.register_forward_pre_hook(enter))
        if last is not first:
            handles.append(last.register_forward_pre_hook(enter))
        handles.append(last.register_forward_hook(lambda *a: state.update(part="head")))
    for module in model.modules():
        if _tp_region(module):
            handles.append(module.register_forward_pre_hook(lambda *a: state.update(tp_depth=state["tp_depth"] + 1)))
            handles.append(module.register_forward_hook(lambda *a: state.update(tp_depth=state["tp_depth"] - 1)))
    counter = flop_counter()
    try:
        with ExitStack() as stack:
            stack.enter_context(counter)
            stack.enter_context(_FusedAttentionOnMeta())
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
            model(batch)
    finally:
        for h in handles:
            h.remove()
    out.flops = int(counter.get_total_flops())
    return out
