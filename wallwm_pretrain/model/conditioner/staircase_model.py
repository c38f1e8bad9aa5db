"""Staircase decoding as one trainable module: frozen VLM -> branch -> prefix projector -> frozen
small LM.

The frozen VLM (``model.conditioner.vlm``) and the frozen small LM (``model.staircase.small_lm``)
are plain attributes, not submodules, as in :class:`~.model.TextConditioner`: their weights are in
neither the state dict nor the optimizer and never get a gradient. Only the branch
(:class:`~.staircase.StaircaseBranch`) and the prefix projector (:class:`~.small_lm.PrefixProjector`)
train, on ``L_CoT`` (the stage-4 row of DESIGN.md's stage table). The context is the
conditioner's: all camera views + the prompt of :func:`~.prompt.build_prompt`. Both frozen models
load in ``model.conditioner.vlm_dtype``; the branch and the projector keep float32 weights.

Not here yet: the trainer's interface (a ``model.kind`` for stage 4, batches from the conditioner
shards' ``reasoning`` field) and the projection of the latents into the DiT's text-context space.
"""

from __future__ import annotations

import torch
from torch import nn

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.conditioner.model import vlm_dtype
from wallwm_pretrain.model.conditioner.small_lm import FrozenSmallLM, PrefixProjector
from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch
from wallwm_pretrain.model.conditioner.vlm import FrozenVLM


class StaircaseModel(nn.Module):
    """Reasoning latents from (views, prompt) and the trace the small LM reads back from them."""

    def __init__(self, cfg: ModelConfig, vlm: FrozenVLM | None = None,
                 small_lm: FrozenSmallLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg.staircase
        dtype = vlm_dtype(cfg.conditioner.vlm_dtype)
        # plain attributes (FrozenVLM / FrozenSmallLM are not nn.Modules): outside the state dict
        self.vlm = vlm if vlm is not None else FrozenVLM.load(cfg.conditioner.vlm, dtype=dtype)
        self.small_lm = small_lm if small_lm is not None else FrozenSmallLM.load(cfg.staircase.small_lm,
                                                                                  dtype=dtype)
        self.branch = StaircaseBranch(self.vlm.num_layers, self.vlm.hidden_size, cfg.staircase)
        self.projector = PrefixProjector(self.vlm.hidden_size, self.small_lm.hidden_size,
                                         cfg.staircase.prefix_per_latent)

    def to(self, *args, **kwargs):
        """Move the trained modules and, for a device, the frozen models with them."""
        out = super().to(*args, **kwargs)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.vlm.to(device)
            self.small_lm.to(device)
        return out

    def latents(self, images, prompts: list[str]) -> torch.Tensor:
        """z [B, K_c, D_vlm]: the relay and one parallel forward of the upper layers."""
        states, valid = self.vlm.layer_states(images, prompts)
        return self.branch(states, valid)

    def forward(self, images, prompts: list[str], traces: list[str]) -> dict[str, torch.Tensor]:
        """``{"loss": L_CoT, "latents": z}`` for a batch of observations and their traces."""
        z = self.latents(images, prompts)
        ids, mask = self.small_lm.tokenize(traces, self.cfg.trace_tokens)
        return {"loss": self.small_lm.cot_loss(self.projector(z), ids, mask), "latents": z}

    @torch.no_grad()
    def decode_traces(self, images, prompts: list[str]) -> list[str]:
        """The traces the small LM decodes greedily from the latents."""
        return self.small_lm.decode(self.projector(self.latents(images, prompts)), self.cfg.trace_tokens)
