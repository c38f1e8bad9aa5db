"""Staircase decoding as one trainable module: frozen VLM -> branch -> prefix projector -> frozen
small LM.

The frozen VLM (``model.conditioner.vlm``) and the frozen small LM (``model.staircase.small_lm``)
are plain attributes, not submodules, as in :class:`~.model.TextConditioner`: their weights are in
neither the state dict nor the optimizer and never get a gradient. Only the branch
(:class:`~.staircase.StaircaseBranch`) and the prefix projector (:class:`~.small_lm.PrefixProjector`)
train, on ``L_CoT`` (the stage-4 row of DESIGN.md's stage table). The context is the
conditioner's: all camera views + the prompt of :func:`~.prompt.build_prompt`. Both frozen models
load in ``model.conditioner.vlm_dtype``; the branch and the projector keep float32 weights.

``model.kind=staircase`` trains it through the trainer (stage 4): batches from conditioner
shards (``data.mode=conditioner``) whose samples carry a ``reasoning`` trace, data parallel only
(the interface of :class:`~.model.TextConditioner`: ``loss_keys``, ``loss_counts``, ...; ``L_CoT``
is the trace tokens' summed negative log-likelihood over the global batch's token count).

Not here yet: the projection of the latents into the DiT's text-context space (unified mode).
"""

from __future__ import annotations

import torch
from torch import nn

from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.conditioner.model import NoDraws, vlm_dtype
from wallwm_pretrain.model.conditioner.prompt import build_prompt
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.model.conditioner.small_lm import FrozenSmallLM, PrefixProjector
from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch
from wallwm_pretrain.model.conditioner.vlm import FrozenVLM


class StaircaseModel(nn.Module):
    """Reasoning latents from (views, prompt) and the trace the small LM reads back from them."""

    loss_keys = ("loss", "loss_cot")

    def __init__(self, cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None, *, pg_collection=None,
                 vlm: FrozenVLM | None = None, small_lm: FrozenSmallLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg  # the model section (the trainer's pipeline config reads it)
        self.scfg = cfg.staircase
        self.pipeline_slice = PipelineSlice.of(pipeline_slice, cfg.num_layers)
        if not (self.pipeline_slice.embed and self.pipeline_slice.head):
            raise ValueError("the Staircase branch is one pipeline rank (parallel.pp=1)")
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
        self._context_tokens = int(valid.shape[1])
        return self.branch(states, valid)

    def cot(self, images, prompts: list[str], traces: list[str],
            denominator: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"loss": L_CoT, "latents": z}`` for a batch of observations and their traces."""
        z = self.latents(images, prompts)
        ids, mask = self.small_lm.tokenize(traces, self.scfg.trace_tokens)
        return {"loss": self.small_lm.cot_loss(self.projector(z), ids, mask, denominator), "latents": z}

    # -- the trainer's interface (model.kind=staircase) --------------------------------------
    def prompts(self, batch: ConditionerBatch) -> list[str]:
        return [build_prompt(t, d, self.cfg.conditioner.max_done) for t, d in zip(batch.task, batch.done)]

    def _traces(self, batch: ConditionerBatch) -> list[str]:
        if len(batch.reasoning) != batch.size or not all(batch.reasoning):
            missing = [k for k, r in zip(batch.keys, batch.reasoning or [""] * batch.size) if not r][:3]
            raise ValueError(f"model.kind=staircase trains on reasoning traces, but samples {missing} carry none: "
                             "rebuild the conditioner shards with `python -m data_tools build-conditioner`")
        return batch.reasoning

    def loss_counts(self, batch: ConditionerBatch) -> torch.Tensor:
        """[1] float: real trace tokens of this batch (summed over ranks by the trainer)."""
        _, mask = self.small_lm.tokenize(self._traces(batch), self.scfg.trace_tokens)
        return mask.sum().to(batch.remaining.device, torch.float32).reshape(1)

    def sample_noise(self, batch: ConditionerBatch, generator: torch.Generator | None = None) -> NoDraws:
        return NoDraws()

    def boundary_seq_length(self, batch: ConditionerBatch) -> int:
        return 1

    def parameter_counts(self) -> dict[str, int]:
        trained = sum(p.numel() for p in self.parameters())
        return {"staircase_branch": sum(p.numel() for p in self.branch.parameters()),
                "prefix_projector": sum(p.numel() for p in self.projector.parameters()),
                "vlm_frozen": self.vlm.num_parameters(), "total": trained}

    def train_flops(self, batch: ConditionerBatch) -> int:
        """Model FLOPs of one sample's training step, roughly: the frozen VLM's forward over the
        prompt (2 per parameter and token), the frozen small LM's forward and the backward that
        reaches the prefix through it (6 per parameter and token), and the branch's and
        projector's forward and backward (6 per parameter and latent)."""
        trained = sum(p.numel() for p in self.parameters())
        trace = self.scfg.trace_tokens + self.scfg.latents * self.scfg.prefix_per_latent
        context = getattr(self, "_context_tokens", 0)  # prompt length of the last forward
        return int(2 * self.vlm.num_parameters() * context + 6 * self.small_lm.num_parameters() * trace
                   + 6 * trained * self.scfg.latents)

    def forward(self, batch: ConditionerBatch, *, noise=None, loss_denominators: torch.Tensor | None = None,
                hidden=None, generator=None) -> dict[str, torch.Tensor]:
        """``L_CoT`` of one batch (``loss_denominators``: the global trace-token count)."""
        den = None if loss_denominators is None else loss_denominators.reshape(())
        out = self.cot(batch.observation, self.prompts(batch), self._traces(batch), den)
        return {"loss": out["loss"], "loss_cot": out["loss"].detach()}

    @torch.no_grad()
    def decode_traces(self, images, prompts: list[str]) -> list[str]:
        """The traces the small LM decodes greedily from the latents."""
        return self.small_lm.decode(self.projector(self.latents(images, prompts)), self.scfg.trace_tokens)
