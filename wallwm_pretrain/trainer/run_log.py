"""What a training run tells its user: the set-up lines, the step line every ``train.log_every``
steps (loss parts, grad norm, learning rates, samples/s, padding efficiency, memory, MFU), a
progress bar on a terminal, MLflow metrics, and at the end the loss curve, the artifacts and the
:class:`~wallwm_pretrain.trainer.summary.RunSummary`.

Throughput is measured over the window since the last step line (so a slow first step or a
save does not blur it for the rest of the run); MFU divides the model FLOPs of the padded shapes
the steps computed by the peak of every device of the run (GPUs only). Only rank 0 prints.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from wallwm_pretrain.model.freeze import describe_train_parts
from wallwm_pretrain.step_metrics import memory_label, peak_memory_gib, peak_tflops
from wallwm_pretrain.tracking import plot_loss_curve
from wallwm_pretrain.trainer.summary import RunSummary


log = logging.getLogger("wallwm_pretrain")

# per-step counts that feed the meters, not metrics of their own
_COUNTS = ("samples", "tokens", "model_flops")


class RunLog:
    """Meters, progress and tracking of one invocation of :meth:`Trainer.train`."""

    def __init__(self, trainer: Any, end_step: int) -> None:
        self.t = t = trainer
        self.end_step = end_step
        self.start_step = t.step
        self.losses: list[float] = []
        self.samples, self.t_start = 0, time.perf_counter()
        self._reset_window()
        self.peak = peak_tflops(t.device, t.cfg.train.peak_tflops)
        if t.ctx.is_main:
            counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in t.param_counts.items())
            log.info("parameters: %s", counts)
            log.info("components (model.train_parts=%s):\n%s", list(t.cfg.model.train_parts),
                     describe_train_parts(t.part_counts))
            log.info("optimizer groups: %s", t.optim.param_groups_summary())
        self.bar = tqdm(
            total=t.cfg.train.steps,
            initial=t.step,
            # a bar only on a terminal; logs and CI get the per-log_every lines alone
            disable=not (t.ctx.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
            desc="train",
        )

    def _reset_window(self) -> None:
        self.window_samples, self.window_tokens, self.window_flops = 0, 0, 0
        self.t_window = time.perf_counter()

    def record(self, m: dict[str, float]) -> None:
        """An applied step's metrics (after ``t.step`` advanced): meters, history, bar, and the
        step line and MLflow metrics when it is a logging step."""
        t = self.t
        self.losses.append(m["loss"])
        self.samples += m["samples"]
        self.window_samples += m["samples"]
        self.window_tokens += m["tokens"]
        self.window_flops += m["model_flops"]
        for k in t.loss_keys:
            t.history[k].append((t.step, m[k]))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}")
        if t.step % t.cfg.train.log_every == 0 or t.step == self.end_step:
            self._log_window(m)

    def _log_window(self, m: dict[str, float]) -> None:
        t = self.t
        dt = max(time.perf_counter() - self.t_window, 1e-9)
        m["samples_per_s"] = self.window_samples / dt
        m["tokens_per_s"] = self.window_tokens / dt
        m["memory_gib"] = peak_memory_gib(t.device)
        if self.peak:  # on GPUs: model FLOPs per second over the peak of all devices of the run
            m["mfu"] = self.window_flops / dt / (self.peak * 1e12 * t.ctx.world_size)
        m.update({f"lr/{k}": v for k, v in t.optim.lrs().items()})
        t.tracker.log_metrics({k: v for k, v in m.items() if k not in _COUNTS}, t.step)
        if t.ctx.is_main:
            self.bar.write(
                f"step {t.step:6d} | loss {m['loss']:.4f} ("
                + ", ".join(f"{k.removeprefix('loss_')} {m[k]:.4f}" for k in t.loss_keys[1:])
                + f") | grad {m['grad_norm']:.3f} | "
                + " ".join(f"{k} {v:.2e}" for k, v in t.optim.lrs().items())
                + f" | {m['samples_per_s']:.1f} samples/s | pad eff {m['padding_efficiency']:.2f}"
                + f" | {memory_label(t.device)} {m['memory_gib']:.2f} GiB"
                + (f" | MFU {m['mfu']:.3f}" if "mfu" in m else "")
            )
        self._reset_window()

    def steps_done(self) -> None:
        """The loop ended: close the bar and stop the clock of the summary's samples/s (saves excluded)."""
        self.bar.close()
        self.elapsed = time.perf_counter() - self.t_start

    def stop_requested(self, reason: str) -> None:
        if self.t.ctx.is_main:
            log.warning("stop requested (%s) at step %d of %d: saving, then exiting with code 75 to be run again",
                        reason, self.t.step, self.t.cfg.train.steps)

    def finish(self, checkpoint: Optional[Path], stopped: str) -> RunSummary:
        """After :meth:`steps_done` and the final save: the loss curve, the artifacts and
        ``summary.json``; end tracking."""
        t = self.t
        if t.ctx.is_main:
            curve = t.run_dir / "loss_curve.png"
            plot_loss_curve(t.history, curve)
            t.tracker.log_artifact(curve)
            t.tracker.log_artifact(t.run_dir / "config.yaml")
        head, tail = self.losses[:10], self.losses[-10:]
        summary = RunSummary(
            start_step=self.start_step,
            end_step=t.step,
            first_loss=float(np.mean(head)) if head else float("nan"),
            last_loss=float(np.mean(tail)) if tail else float("nan"),
            samples_per_s=self.samples / max(self.elapsed, 1e-9),
            checkpoint=str(checkpoint),
            mlflow_run_id=t.tracker.run_id or "",
            resumed_from=t.resumed_from,
            stopped=stopped,
            skipped_steps=t.skips.total,
        )
        if t.ctx.is_main:
            (t.run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        t.tracker.finish()
        return summary
