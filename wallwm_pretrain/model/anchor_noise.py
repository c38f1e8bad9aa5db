"""The anchor-noise protocol of action pretraining (``model.action_pretrain.mapping=anchor``).

In action pretraining (stage 2) the video tower is frozen and its loss off; the action tower
(with its coupling to the video blocks) learns. The symmetric mapping pairs each action draw
with a video forward at the video's own noise level. The anchor mapping holds the video tower at
one flow time t*, the time the sampler feeds it late in its walk from noise (the paper: step 45
of 50; see :class:`~wallwm_pretrain.config.ActionPretrainConfig` for the convention), runs it ONCE
per sample and lets K action-noise draws, each with its own flow time and noise, reuse that one
forward in the same optimizer step:

    loss_action = 1/K * sum_k masked_mse(action tower(x_a^k, t_a^k | video features at t*), target^k)

Nothing is approximated: the video tower never reads the action stream (one-way coupling), so
every layer's video output is the same for all K draws. The video pass records each layer's
output once and every action pass reads them, which gives the losses and gradients of K whole
forwards that each see these anchor-step video features (``tests/model/test_anchor_noise.py``).
When nothing the video side reads trains (stage 2 freezes the video tower and, on the small
path, the caption encoder) its forward runs under ``torch.no_grad``: no activations kept for
backward, no backward through it. A trained video side gets the coupling gradients of all K
draws through the one shared graph.

The model provides the hooks (members of the :class:`~.interface.Denoiser` interface, written once
for both video towers in ``denoiser.py`` or by each tower in its implementation):

- ``flow_inputs(batch, noise)``: the noisy inputs of one draw (exists for the ordinary forward);
- ``anchor_video(inputs)``: the video side once, every coupled layer's video output recorded;
- ``anchor_action(inputs, features)``: one action pass on those outputs -> (action velocity
  prediction ``[B, T, A]``, the action streams);
- ``time_loss(inputs, streams, denominator)``: the remaining-time head's loss, or None;
- ``video_side_parameters()``: what the video pass reads (decides ``torch.no_grad``).

Pipeline parallelism is not supported: a pipeline schedule sends one tensor per microbatch
between pipeline ranks, and the K action passes would each need every pipeline rank's recorded video outputs;
the config rejects ``parallel.pp > 1`` with the anchor mapping. Tensor and data parallelism run
unchanged (the same layers, in another order; draws slice by rows like :class:`FlowNoise`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.flow_matching import FlowNoise, masked_mse, sample_time, shift_time
from wallwm_pretrain.model.interface import Denoiser


def anchor_time(cfg: ModelConfig) -> float:
    """t*: the video flow time the sampler (``eval/sampler.py``) feeds the video tower at Euler step
    ``anchor_step`` of ``schedule_steps`` (t = 1 is noise, t = 0 the data; the grid time
    ``1 - step / steps`` mapped through the video schedule's shift)."""
    ap = cfg.action_pretrain
    return float(shift_time(1.0 - ap.anchor_step / ap.schedule_steps, cfg.video_time_shift))


@dataclass
class AnchorDraws:
    """One step's draws under the anchor mapping: one video draw, K action draws per sample."""

    t_video: torch.Tensor  # [B], every entry t*
    noise_video: torch.Tensor  # as FlowNoise.noise_video
    t_action: torch.Tensor  # [B, K]
    noise_action: torch.Tensor  # [B, K, T, A]

    @property
    def count(self) -> int:
        """K, the action draws per video forward."""
        return self.t_action.shape[1]

    def draw(self, k: int) -> FlowNoise:
        """Action draw ``k`` with the shared video draw, as the ordinary forward takes it."""
        return FlowNoise(self.t_video, self.noise_video, self.t_action[:, k], self.noise_action[:, k])

    def rows(self, start: int, stop: int) -> "AnchorDraws":
        """The draws of samples ``start:stop`` of the batch."""
        return AnchorDraws(*(x[start:stop] for x in (self.t_video, self.noise_video, self.t_action, self.noise_action)))


def with_anchor_draws(cfg: ModelConfig, noise: FlowNoise, generator: torch.Generator | None = None):
    """``noise`` itself under the symmetric mapping; under the anchor mapping, :class:`AnchorDraws`
    with the video time set to t*, the video noise and the first action draw kept, and draws
    2..K drawn after them from ``generator`` (flow times uniform, as the action tower's)."""
    ap = cfg.action_pretrain
    if ap.mapping != "anchor":
        return noise
    times, noises = [noise.t_action], [noise.noise_action]
    for _ in range(ap.draws - 1):
        times.append(sample_time(noise.t_action.shape[0], noise.t_action.device, generator))
        noises.append(torch.randn(noise.noise_action.shape, device=noise.noise_action.device, generator=generator))
    t_video = torch.full_like(noise.t_video, anchor_time(cfg))
    return AnchorDraws(t_video, noise.noise_video, torch.stack(times, 1), torch.stack(noises, 1))


def anchor_losses(model: Denoiser, batch: Batch, draws: AnchorDraws, loss_denominators: torch.Tensor | None = None,
                  hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's loss keys under the anchor mapping: one video pass, K action passes.

    ``loss_action`` is the mean of the K draws' action losses, ``loss_video`` is 0 (the mapping
    trains no video loss), ``loss_time`` is computed once (it reads no noisy input).

    Raises:
        ValueError: ``model`` is a pipeline rank, not the whole model.
    """
    part = model.pipeline_slice
    if hidden is not None or not (part.embed and part.head):
        raise ValueError(
            "model.action_pretrain.mapping=anchor needs the whole model on one pipeline rank (parallel.pp=1)"
        )
    cfg = model.cfg
    inputs = [model.flow_inputs(batch, draws.draw(k)) for k in range(draws.count)]
    frozen = not any(p.requires_grad for p in model.video_side_parameters())
    with torch.no_grad() if frozen else contextlib.nullcontext():
        features = model.anchor_video(inputs[0])
    den_a, den_t = (None, None) if loss_denominators is None else loss_denominators.unbind()[1:]
    loss_a, streams = None, None
    for one in inputs:
        pred_a, s = model.anchor_action(one, features)
        term = masked_mse(pred_a, one.target_action, one.action_valid, den_a)
        loss_a, streams = (term, s) if loss_a is None else (loss_a + term, streams)
    loss_a = loss_a / len(inputs)
    loss = cfg.action_loss_weight * loss_a
    zero = torch.zeros((), device=loss.device)
    loss_t = model.time_loss(inputs[0], streams, den_t)
    if loss_t is None:
        loss_t = zero
    else:
        loss = loss + cfg.time_loss_weight * loss_t
    return {"loss": loss, "loss_video": zero, "loss_action": loss_a.detach(), "loss_time": loss_t.detach()}
