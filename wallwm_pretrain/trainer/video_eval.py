"""The world model's predicted video during training (``train.video_eval_every``).

Every ``video_eval_every`` steps rank 0 predicts the video of the same few held-out events
(``train.video_eval_shards``, the first ``train.video_eval_events``) with the model as it is,
exactly as ``python -m wallwm_pretrain.eval worldmodel`` does on a checkpoint
(``eval/video_predict.py``, ``eval/video_metrics.py``, ``eval/video_grid.py``), and logs at
that step: ``video_eval/psnr`` and ``video_eval/ssim`` of the model and of the copy-the-first-
frame baseline (the means over the events), and one grid per task (recorded, predicted and
error rows) under ``video_eval/step_<step>/`` in the run folder and as MLflow artifacts. The
noise of event i is seeded with ``train.seed + i`` at every evaluation, so the pictures differ
only by what the model learnt. Other ranks do not wait: nothing here is a collective.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch

log = logging.getLogger("wallwm_pretrain")


def unavailable(cfg) -> str:
    """Why this run cannot predict video as it trains ('' when it can)."""
    m, par = cfg.model, cfg.parallel
    from wallwm_pretrain.eval.video_predict import PREDICTORS

    if m.kind != "towers" or m.video_tower not in PREDICTORS:
        return (f"only the towers predict video (model.kind={m.kind}, model.video_tower={m.video_tower}; the video "
                f"towers with a predictor are {', '.join(PREDICTORS)})")
    if cfg.data.mode not in ("event", "chunk"):
        return f"it predicts events from their first frame alone, in event or chunk mode (data.mode={cfg.data.mode})"
    if (par.tp, par.pp) != (1, 1):
        return f"it needs the whole model on rank 0 (parallel.tp=1, pp=1; got tp={par.tp}, pp={par.pp})"
    return ""


class VideoEval:
    """Called after every optimizer step; acts every ``train.video_eval_every`` steps on rank 0."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.every = trainer.cfg.train.video_eval_every
        why_not = unavailable(trainer.cfg) if self.every else ""
        if why_not and trainer.ctx.is_main:
            log.warning("train.video_eval_every=%d: off for this run, %s", self.every, why_not)
        self.active = bool(self.every) and not why_not and trainer.ctx.is_main
        if self.active:  # a wrong shard folder fails here, before the first step
            self._read()

    def _read(self):
        from wallwm_pretrain.data.index import read_index
        from wallwm_pretrain.eval.video_predict import read_heldout_events

        cfg = self.trainer.cfg
        shards = cfg.train.video_eval_shards or cfg.data.shards
        # the training statistics normalise the state; for the Wan tower they name the frozen VAE and UMT5
        self.index = read_index(cfg.data.shards)
        self.events = read_heldout_events(shards, cfg.data.max_frames, cfg.train.video_eval_events, cfg.model.image_size)

    def due(self, step: int) -> bool:
        """Whether this rank evaluates after ``step``."""
        return self.active and step % self.every == 0

    @torch.no_grad()
    def run(self, step: int) -> dict[str, float]:
        """Predict, score, draw and log at ``step``; returns the logged metrics."""
        from wallwm_pretrain.eval.video_grid import save_video_grid
        from wallwm_pretrain.eval.video_metrics import video_scores
        from wallwm_pretrain.eval.video_predict import PREDICTORS, copy_first_frame, recorded_video

        t, cfg = self.trainer, self.trainer.cfg
        t.optim.finish_param_sync()  # updates in flight land before the weights are read
        model = t.chunks[0]  # parallel.tp = pp = 1 (config rule): the whole model
        was_training = model.training
        model.eval()
        try:
            predict = PREDICTORS[cfg.model.video_tower](model, cfg, self.index, cfg.train.video_eval_denoise_steps)
            stride, folder = cfg.model.frame_stride, t.run_dir / "video_eval" / f"step_{step:08d}"
            scores: dict[str, list[dict]] = {"model": [], "copy_first_frame": []}
            grids = {}
            for i, event in enumerate(self.events):
                recorded = recorded_video(event, stride)
                if recorded.shape[0] < 2:
                    continue  # one latent frame: nothing to predict (eval worldmodel names these)
                predicted = predict(event, torch.Generator(device=predict.device).manual_seed(cfg.train.seed + i))
                scores["model"].append(video_scores(predicted, recorded))
                scores["copy_first_frame"].append(video_scores(copy_first_frame(event, stride), recorded))
                if event.task not in grids:
                    name = re.sub(r"[^A-Za-z0-9._-]+", "_", event.task).strip("_") or "task"
                    grids[event.task] = save_video_grid(recorded, predicted, folder / f"{name}.png", stride=stride,
                                                        title=f"step {step}: {event.task}: {event.caption} ({event.key})")
        finally:
            model.train(was_training)
        if not scores["model"]:
            log.warning("video eval at step %d: no held-out event is longer than one latent frame", step)
            return {}
        metrics = {f"video_eval/{k}{'' if m == 'model' else '_' + m}": float(np.mean([s[k] for s in rows]))
                   for m, rows in scores.items() for k in ("psnr", "ssim")}
        t.tracker.log_metrics(metrics, step)
        for png in grids.values():
            t.tracker.log_artifact(png, f"video_eval/step_{step:08d}")
        log.info("video eval at step %d: PSNR %.2f dB (copy the first frame %.2f), SSIM %.3f (%.3f)", step,
                 metrics["video_eval/psnr"], metrics["video_eval/psnr_copy_first_frame"], metrics["video_eval/ssim"],
                 metrics["video_eval/ssim_copy_first_frame"])
        return metrics
