"""Open-loop action error on held-out events.

Each held-out sample is cooked as in training for the checkpoint's mode (one event, or the
task-conditioned windows of chunk mode), with the caption drop off; the model denoises its
actions from the sample's first frame, state and caption, and the denoised actions are
compared with the recorded ones over the sample's real steps. It also reports how far the
remaining-time head is from the true steps to the end of the sample's event (in chunk mode, where
samples are windows of whole episodes, that is the end of the episode, and the head is unused).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wallwm_pretrain.data.loader import read_cooked
from wallwm_pretrain.eval.policy import CheckpointPolicy
from wallwm_pretrain.eval.sampler import sample_event


def heldout_samples(policy: CheckpointPolicy, shards: str | Path):
    """Cooked samples of a shard folder, in file order, as the checkpoint's mode cooks them."""
    cfg = policy.cfg
    data_cfg = dataclasses.replace(
        cfg.data, caption_drop=dataclasses.replace(cfg.data.caption_drop, rho_min=0.0, rho_max=0.0)
    )
    return read_cooked(shards, data_cfg, cfg.model.caption_max_bytes, policy.norm)


@torch.no_grad()
def open_loop_error(policy: CheckpointPolicy, shards: str | Path, seed: int = 0, progress: bool = True) -> dict:
    """Mean action error over held-out samples (normalised MSE, raw-unit MAE), per sample averaged
    over its real steps, and the remaining-time head's mean absolute error in steps."""
    k = policy.cfg.model.frame_stride
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    mse, mae, time_err = [], [], []
    for s in tqdm(list(heldout_samples(policy, shards)), desc="open-loop", unit="sample", disable=not progress):
        steps = -(-s.length // k) * k
        first = torch.from_numpy(np.array(s.frames[0]))[None].to(policy.device)
        state = torch.from_numpy(s.state)[None].to(policy.device)
        caption = torch.from_numpy(s.caption)[None].to(policy.device)
        pred, _ = sample_event(policy.model, first, state, caption, steps, policy.denoise_steps, gen)
        pred = pred[0, : s.length].float().cpu().numpy()
        mse.append(float(np.mean((pred - s.actions) ** 2)))
        raw_err = policy.norm.raw_actions(pred) - policy.norm.raw_actions(s.actions)
        mae.append(float(np.mean(np.abs(raw_err))))
        time_err.append(abs(float(policy.model.remaining_steps(first, state, caption)[0]) - s.remaining))
    if not mse:
        raise ValueError(f"{shards}: no held-out samples")
    return {
        "samples": len(mse),
        "action_mse_normalised": float(np.mean(mse)),
        "action_mae": float(np.mean(mae)),
        "remaining_steps_mae": float(np.mean(time_err)),
    }
