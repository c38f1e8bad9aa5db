"""The text conditioner (``model.kind=conditioner``): a frozen VLM and the heads trained on it.

At an observation inside an event (all camera views, the task, the captions of the events
already done) it predicts what event mode needs to run on its own:

* the *next event's caption*: the event to execute from this observation, i.e. the event in
  progress at it (at an event boundary, the one that starts there), written token by token
  (:class:`~.heads.NextEventHead`, cross-entropy);
* the *remaining time*: control steps left in that event (:class:`~.heads.TimeHead`, Huber on
  latent frames, ``model.frame_stride`` control steps each, as the towers' own head);
* the *aligned text states*: that caption's states in the text encoder's space
  (:class:`~.heads.AlignmentHead`, MSE against the frozen UMT5 states ``embed-captions``
  stored), which the video tower can read in place of the text encoder's.

``L_text = l_align * MSE + l_next * CE + l_time * Huber`` (``model.conditioner``), each term a
mean over the global batch: element, token and sample counts of all data-parallel ranks divide
the sums (``loss_denominators``), as the towers' losses do.

The frozen VLM is held as a plain attribute (:class:`~.vlm.FrozenVLM`, not a submodule): its
weights are in neither the state dict nor the optimizer nor DDP's buffers, are never given a
gradient, and run under ``torch.no_grad``. Checkpoints therefore hold the heads alone; the VLM
is named by ``model.conditioner.vlm``.

The towers keep their own remaining-time head: event mode with a scripted or human caption (no
conditioner) still has to know how many denoised steps to execute, and that head reads the
caption it is given; the conditioner's head answers the same question from the cameras alone,
and ``--events predicted`` uses it.

The class has the interface the trainer's pipeline path drives (``loss_keys``,
``loss_counts``, ``sample_noise``, ``pipeline_slice``, ``boundary_seq_length``), as one
whole-model chunk: conditioner runs are data parallel only (``parallel.tp = pp = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.conditioner.heads import (
    Adapter, AlignmentHead, NextEventHead, TimeHead, alignment_elements, alignment_sse, caption_ce_sum,
)
from wallwm_pretrain.model.conditioner.prompt import build_prompt
from wallwm_pretrain.model.conditioner.vlm import FrozenVLM
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.model.remaining_time import huber_sum

LOSS_KEYS = ("loss", "loss_align", "loss_next", "loss_time")


def vlm_dtype(name: str) -> torch.dtype:
    """``model.conditioner.vlm_dtype`` as a torch dtype (``auto``: bfloat16 where CUDA is available)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class NoDraws:
    """The conditioner draws no flow noise; the trainer's microbatch split still asks for rows."""

    def rows(self, start: int, stop: int) -> "NoDraws":
        return self


@dataclass
class Prediction:
    """What the conditioner says about one observation."""

    caption: str
    """The next event's caption (decoded from the VLM's tokens)."""
    remaining_steps: float
    """Control steps left in that event."""
    text_states: torch.Tensor
    """float [align_tokens, text_dim]: the caption in the text encoder's space, zero-padded as Wan
    reads it (every position trained against the padded target)."""


class TextConditioner(nn.Module):
    """The conditioner's heads over a frozen VLM.

    Args:
        cfg: the ``model`` section (``cfg.conditioner``; ``state_dim`` and ``frame_stride``
            from the towers' fields, ``conditioner.text_dim`` resolved from the shards).
        pipeline_slice: must be the whole model (None).
        pg_collection: ignored (the heads are never split); accepted for the builder's signature.
        vlm: an already loaded frozen VLM (tests, inference); default: load ``conditioner.vlm``.
    """

    loss_keys = LOSS_KEYS

    def __init__(self, cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None, *,
                 pg_collection=None, vlm: FrozenVLM | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.conditioner
        self.pipeline_slice = PipelineSlice.of(pipeline_slice, cfg.num_layers)
        if not (self.pipeline_slice.embed and self.pipeline_slice.head):
            raise ValueError("the text conditioner is one pipeline rank (parallel.pp=1)")
        if not isinstance(c.text_dim, int):
            raise ValueError("model.conditioner.text_dim must be resolved from the shards before building")
        # plain attribute: nn.Module registers only modules, parameters and buffers
        self.vlm = vlm if vlm is not None else FrozenVLM.load(c.vlm, dtype=vlm_dtype(c.vlm_dtype))
        d, dv = c.hidden_size, self.vlm.hidden_size
        self.adapter = Adapter(dv, d)
        self.align = AlignmentHead(d, c.num_heads, c.align_layers, c.align_tokens, c.text_dim)
        self.next_event = NextEventHead(d, c.num_heads, c.decoder_layers, c.caption_tokens, dv)
        self.time = TimeHead(d, cfg.state_dim)

    def to(self, *args, **kwargs) -> "TextConditioner":
        """Move the heads as ``nn.Module.to`` does, and the frozen VLM to the same device (its
        dtype stays ``model.conditioner.vlm_dtype``)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.vlm.to(device)
        return super().to(*args, **kwargs)

    # -- the trainer's interface ---------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        heads = sum(p.numel() for p in self.parameters())
        return {"conditioner_heads": heads, "vlm_frozen": self.vlm.num_parameters(), "total": heads}

    def sample_noise(self, batch: ConditionerBatch, generator: torch.Generator | None = None) -> NoDraws:
        return NoDraws()

    def boundary_seq_length(self, batch: ConditionerBatch) -> int:
        return 1  # one pipeline rank: nothing crosses a pipeline boundary

    def loss_counts(self, batch: ConditionerBatch) -> torch.Tensor:
        """[3] float: aligned text elements, caption tokens, samples (this batch's)."""
        _, valid = self.caption_tokens(batch.caption)
        dev = batch.remaining.device
        align = (torch.zeros((), device=dev) if batch.text_valid is None
                 else alignment_elements(batch.text_valid, self.align.positions, self.cfg.conditioner.text_dim))
        return torch.stack([align.to(dev), valid.sum().to(dev, torch.float32),
                            torch.tensor(float(batch.size), device=dev)])

    def train_flops(self, batch: ConditionerBatch) -> int:
        """Model FLOPs of one sample's training step, approximately: the frozen VLM's forward (2 per
        parameter and prompt token) and the heads' forward and backward (6 per parameter and
        token), at the prompt length of the last forward (the trainer multiplies by samples)."""
        tokens = self._last_tokens or 1
        return int(2 * self.vlm.num_parameters() * tokens + 6 * sum(p.numel() for p in self.parameters()) * tokens)

    # -- forward ---------------------------------------------------------------------------
    _last_tokens: int = 0

    def caption_tokens(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The next-event head's targets: VLM tokens (end token appended) and their mask."""
        return self.vlm.tokenize(captions, self.cfg.conditioner.caption_tokens)

    def memory(self, observation: torch.Tensor, task: list[str], done: list[list[str]]):
        """The heads' memory ``[B, L, d]`` and its padding mask ``[B, L]`` (True = padding)."""
        prompts = [build_prompt(t, d, self.cfg.conditioner.max_done) for t, d in zip(task, done)]
        dev = self.adapter.proj.weight.device
        states, valid = self.vlm.encode(observation, prompts)
        self._last_tokens = int(states.shape[1])
        states = states.to(dev, self.adapter.proj.weight.dtype)
        return self.adapter(states), ~valid.to(dev)

    def forward(self, batch: ConditionerBatch, *, noise=None, loss_denominators: torch.Tensor | None = None,
                hidden=None, generator=None) -> dict[str, torch.Tensor]:
        """``L_text`` and its terms for one batch (``loss_denominators``: the global counts of
        :meth:`loss_counts`; default this batch's own)."""
        c = self.cfg.conditioner
        memory, pad = self.memory(batch.observation, batch.task, batch.done)
        counts = self.loss_counts(batch) if loss_denominators is None else loss_denominators
        den_align, den_next, den_time = counts.clamp_min(1.0).unbind()
        dev = memory.device

        ids, ids_valid = self.caption_tokens(batch.caption)
        ids, ids_valid = ids.to(dev), ids_valid.to(dev)
        table, lm_head = self.vlm.input_embeddings(), self.vlm.output_embeddings()
        logits = self.next_event(ids, memory, pad, table.to(dev), lm_head.to(dev))
        loss_next = caption_ce_sum(logits, ids, ids_valid) / den_next

        loss_align = torch.zeros((), device=dev)
        if batch.text_states is not None:
            pred = self.align(memory, pad)
            loss_align = alignment_sse(pred, batch.text_states.to(dev), batch.text_valid.to(dev)) / den_align

        pred_t = self.time(memory, ~pad, batch.state.to(dev))
        loss_time = huber_sum(pred_t, batch.remaining.to(dev).float() / self.cfg.frame_stride) / den_time

        loss = c.l_align * loss_align + c.l_next * loss_next + c.l_time * loss_time
        return {"loss": loss, "loss_align": loss_align.detach(), "loss_next": loss_next.detach(),
                "loss_time": loss_time.detach()}

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, observation: torch.Tensor, state: torch.Tensor, task: list[str],
                done: list[list[str]]) -> list[Prediction]:
        """The next event's caption, remaining control steps and aligned text states, per sample.

        Args:
            observation: uint8 [B, V, H, W, C] camera views.
            state: float [B, S] normalised proprioception.
        """
        memory, pad = self.memory(observation, task, done)
        dev = memory.device
        table, lm_head = self.vlm.input_embeddings().to(dev), self.vlm.output_embeddings().to(dev)
        ids = self.next_event.generate(memory, pad, table, lm_head, self.vlm.eos_token_id)
        captions = self.vlm.decode(ids)
        steps = self.time(memory, ~pad, state.to(dev)).clamp_min(0.0) * self.cfg.frame_stride
        states = self.align(memory, pad)
        return [Prediction(cap, float(s), st.float().cpu()) for cap, s, st in zip(captions, steps.tolist(), states)]
