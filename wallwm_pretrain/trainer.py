"""The trainer: builds the run from its config and runs the optimisation loop.

``Trainer.__init__`` reads as the pipeline of a run: process groups and device, model,
optimizer, data, resume from a checkpoint, tracking. ``Trainer.train`` then steps to
``train.steps``, logging one line per ``train.log_every`` steps, saving every
``train.save_every`` steps and at the end, and returns a :class:`RunSummary`.

Everything a resumed run needs to continue exactly where the uninterrupted run would be is in
the checkpoint: weights, optimizer and schedule, the loader position and all RNG states.

Every layout (TP x PP x DP, with or without virtual pipeline stages) takes one path: this
rank's model chunks, each in megatron DDP, driven by megatron-core's schedule for the layout
(``wallwm_pretrain.parallel.pipeline``), with ``train.microbatches`` microbatches per step.
The flow noise of a step is drawn for the rank's whole batch from (seed, step, data-parallel
rank) and each microbatch takes its rows, so splitting a batch into microbatches, or the model
into stages, changes no draw.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from wallwm_pretrain import checkpoint as ckpt
from wallwm_pretrain.config import Config, flatten, to_yaml
from wallwm_pretrain.data import EventLoader
from wallwm_pretrain.data.badinput import merge_problems
from wallwm_pretrain.data.dims import resolve_data_dims
from wallwm_pretrain.model import LOSS_KEYS
from wallwm_pretrain.model.flops import SampleShape, train_flops
from wallwm_pretrain.model.flow_matching import noise_seed
from wallwm_pretrain.optim import build_optimizer
from wallwm_pretrain.parallel import init_parallel
from wallwm_pretrain.parallel.canonical import canonical_checkpoint, load_canonical
from wallwm_pretrain.parallel.parallelize import unwrap_model
from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
from wallwm_pretrain.parallel.state import gather_per_dp_rank, optimizer_groups, sum_over_pipeline
from wallwm_pretrain.step_metrics import memory_label, peak_memory_gib, peak_tflops
from wallwm_pretrain.tracking import build_tracker, plot_loss_curve

log = logging.getLogger("wallwm_pretrain")


@dataclass
class RunSummary:
    start_step: int
    end_step: int
    first_loss: float
    last_loss: float
    samples_per_s: float
    checkpoint: str
    mlflow_run_id: str
    resumed_from: str

    def render(self) -> str:
        lines = [
            "=" * 64,
            "wallwm-pretrain run summary",
            f"  steps            {self.start_step} -> {self.end_step}"
            + (f" (resumed from {self.resumed_from})" if self.resumed_from else ""),
            f"  loss             first {self.first_loss:.4f} -> last {self.last_loss:.4f}"
            "  (means over the first and last 10 steps of this invocation)",
            f"  samples/s        {self.samples_per_s:.1f}",
            f"  checkpoint       {self.checkpoint}",
            f"  MLflow run id    {self.mlflow_run_id}",
            "=" * 64,
        ]
        return "\n".join(lines)


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: Config) -> None:
        # 0. the model's data dims (``auto``) from the shards' index.json, checked before any work
        self.cfg = cfg = resolve_data_dims(cfg)
        # 1. process groups and device (megatron-core state; CPU patches when there is no GPU)
        par = cfg.parallel
        self.ctx = init_parallel(par.tp, par.pp, cfg.train.device, cfg.train.seed, vpp=par.vpp)
        self.device = self.ctx.device
        self.run_dir = cfg.train.run_dir
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        device_type = self.device.type
        autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

        # 2. model: this rank's pipeline chunks, each built after the same seed (identical
        # replicated weights; megatron draws TP master weights whole and keeps this rank's
        # slices; a chunk's layers get the weights they have in the whole model), each wrapped
        # for data parallel, driven by the schedule of the layout in microbatches
        self.chunks = build_pipeline_chunks(cfg.model, self.ctx, cfg.train.seed)
        self.param_counts = self._parameter_counts()
        self.model = parallelize_chunks(self.chunks, self.ctx)
        self.schedule = PipelineSchedule(self.model, self.ctx, cfg.train.microbatches, autocast)
        self.noise_rng = torch.Generator(device=self.device)

        # 3. optimizer: Muon for hidden matrices (each logical matrix orthogonalised whole, by
        # default once on its home rank: optim.muon_mode), AdamW for the rest, warmup + cosine,
        # gradient norm clipped over all model-parallel ranks; gradients in the DDP buffers
        self.optim = build_optimizer(
            [unwrap_model(m) for m in self.model], cfg.optim, cfg.train.steps, optimizer_groups(self.ctx),
            grad_buffers=self.model, device_type=self.device.type,
        )

        # 4. data for this data-parallel rank
        self.loader = EventLoader(
            cfg.data, cfg.model.frame_stride, cfg.model.caption_max_bytes, self.ctx.dp_rank, self.ctx.dp
        )
        # the config and the data are checked: only now does the run folder exist (the resolved
        # config in it holds the dims the model was built with)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))

        # 5. resume: weights, optimizer, loader position, RNG, MLflow run
        self.step = 0
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in LOSS_KEYS}
        self.resumed_from = ""
        run_id = None
        path = ckpt.resolve_resume(self.run_dir, cfg.train.resume)
        if path is not None:
            run_id = self._restore(path)
            self.resumed_from = str(path)

        # 6. tracking (rank 0 only)
        self.tracker = build_tracker(cfg, self.ctx.rank, run_id)
        if run_id is None:
            self.tracker.log_params(flatten(cfg))
            self.tracker.log_params({f"params.{k}": v for k, v in self.param_counts.items()})

    def _parameter_counts(self) -> dict[str, int]:
        """Parameters of the whole pipeline (this rank's tensor-parallel slices), per tower."""
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            for k, v in chunk.parameter_counts().items():
                counts[k] = counts.get(k, 0) + v
        return sum_over_pipeline(counts, self.ctx)

    # -- checkpoints --------------------------------------------------------------------
    def _restore(self, path: Path) -> Optional[str]:
        state = ckpt.load_checkpoint(path)
        # each stage takes its layers, each TP rank its slices, each Muon owner its matrices'
        # state, from the canonical state
        load_canonical(self.model, self.optim, state.model, state.optimizer, self.ctx)
        trainer = state.trainer
        self.step = int(trainer["step"])
        loaders = trainer["loaders"]  # one position per data-parallel rank
        if len(loaders) == self.ctx.dp:
            self.loader.load_state_dict(loaders[self.ctx.dp_rank])
        else:
            epoch = max(int(s["epoch"]) for s in loaders)
            log.warning(
                "checkpoint has %d data-parallel loader positions, this run %d: data restarts at the "
                "beginning of epoch %d", len(loaders), self.ctx.dp, epoch + 1,
            )
            # problems already counted stay counted, whichever rank found them
            self.loader.load_state_dict({"epoch": epoch + 1, "batches_in_epoch": 0, **merge_problems(loaders)})
        saved = json.loads(trainer["history"])
        self.history = {k: [tuple(p) for p in saved.get(k, [])] for k in LOSS_KEYS}
        set_rng_state(trainer["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return trainer.get("mlflow_run_id") or None

    def save(self) -> Optional[Path]:
        """Gather the canonical (TP=1, PP=1) state and every DP rank's loader position; rank 0 writes."""
        model_state, optim_state = canonical_checkpoint(self.model, self.optim, self.ctx)
        loaders = gather_per_dp_rank(self.loader.state_dict(), self.ctx)
        if not self.ctx.is_main:
            return None
        trainer_state = {
            "step": self.step,
            "loaders": loaders,
            "layout": {"tp": self.ctx.tp, "pp": self.ctx.pp, "dp": self.ctx.dp, "vpp": self.ctx.vpp,
                       "microbatches": self.cfg.train.microbatches},
            "rng": rng_state(),
            "history": json.dumps(self.history),
            "mlflow_run_id": self.tracker.run_id or "",
        }
        return ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            model=model_state,
            optimizer=optim_state,
            trainer=trainer_state,
            config_yaml=to_yaml(self.cfg),
            keep_last=self.cfg.train.keep_checkpoints,
        )

    # -- the loop -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        batch = next(self.loader).to(self.device)
        for chunk in self.model:
            chunk.train()
        # Flow-matching draws depend only on (seed, step, data-parallel rank), see noise_seed.
        # Drawn for the whole batch; each microbatch takes its rows.
        self.noise_rng.manual_seed(noise_seed(self.cfg.train.seed, self.step, self.ctx.dp_rank))
        noise = self.chunks[0].sample_noise(batch, self.noise_rng)
        # forward and backward of all microbatches through the pipeline (megatron's schedule)
        out = self.schedule.run(batch, noise)
        grad_norm = self.optim.clip_grad_norm(self.cfg.optim.grad_clip)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {k: float(out[k].detach()) for k in LOSS_KEYS}
        metrics["grad_norm"] = float(grad_norm)
        metrics["padding_efficiency"] = batch.padding_efficiency()
        metrics["data/bad_samples"] = self.loader.bad_samples  # skipped within data.max_bad_samples
        metrics["samples"] = batch.size * self.ctx.dp  # global batch (every DP rank reads as much)
        metrics["tokens"] = int(batch.lengths.sum()) * self.ctx.dp
        # model FLOPs of the padded shapes this step computed, over all data-parallel ranks
        shape = SampleShape.of(self.cfg.model, batch.actions.shape[1], self.cfg.model.frame_stride, batch.caption.shape[1])
        metrics["model_flops"] = train_flops(self.cfg.model, shape) * metrics["samples"]
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step} (batch {batch.keys[:4]}...)")
        return metrics

    def train(self) -> RunSummary:
        cfg = self.cfg.train
        start_step = self.step
        end_step = cfg.stop_after or cfg.steps
        if self.ctx.is_main:
            counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.param_counts.items())
            log.info("parameters: %s", counts)
            log.info("optimizer groups: %s", self.optim.param_groups_summary())
        losses: list[float] = []
        samples, t_start = 0, time.perf_counter()
        window_samples, window_tokens, window_flops, t_window = 0, 0, 0, time.perf_counter()
        peak = peak_tflops(self.device, cfg.peak_tflops)
        last_path: Optional[Path] = None
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            # a bar only on a terminal; logs and CI get the per-log_every lines alone
            disable=not (self.ctx.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
            desc="train",
        )
        while self.step < end_step:
            m = self.train_step()
            losses.append(m["loss"])
            samples += m["samples"]
            window_samples += m["samples"]
            window_tokens += m["tokens"]
            window_flops += m["model_flops"]
            for k in LOSS_KEYS:
                self.history[k].append((self.step, m[k]))
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == end_step:
                dt = max(time.perf_counter() - t_window, 1e-9)
                m["samples_per_s"] = window_samples / dt
                m["tokens_per_s"] = window_tokens / dt
                m["memory_gib"] = peak_memory_gib(self.device)
                if peak:  # on GPUs: model FLOPs per second over the peak of all devices of the run
                    m["mfu"] = window_flops / dt / (peak * 1e12 * self.ctx.world_size)
                m.update({f"lr/{k}": v for k, v in self.optim.lrs().items()})
                self.tracker.log_metrics(
                    {k: v for k, v in m.items() if k not in ("samples", "tokens", "model_flops")}, self.step
                )
                if self.ctx.is_main:
                    bar.write(
                        f"step {self.step:6d} | loss {m['loss']:.4f} (video {m['loss_video']:.4f}, action "
                        f"{m['loss_action']:.4f}, time {m['loss_time']:.3f}) | grad {m['grad_norm']:.3f} | "
                        + " ".join(f"{k} {v:.2e}" for k, v in self.optim.lrs().items())
                        + f" | {m['samples_per_s']:.1f} samples/s | pad eff {m['padding_efficiency']:.2f}"
                        + f" | {memory_label(self.device)} {m['memory_gib']:.2f} GiB"
                        + (f" | MFU {m['mfu']:.3f}" if "mfu" in m else "")
                    )
                window_samples, window_tokens, window_flops, t_window = 0, 0, 0, time.perf_counter()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end_step:
                last_path = self.save()
        bar.close()
        elapsed = time.perf_counter() - t_start
        if self.step > start_step:  # periodic saves skip the last step: it is saved here, by all ranks
            last_path = self.save()
        last_path = last_path or ckpt.find_latest(self.run_dir)  # nothing new if already complete
        if self.ctx.is_main:
            curve = self.run_dir / "loss_curve.png"
            plot_loss_curve(self.history, curve)
            self.tracker.log_artifact(curve)
            self.tracker.log_artifact(self.run_dir / "config.yaml")
        head, tail = losses[:10], losses[-10:]
        summary = RunSummary(
            start_step=start_step,
            end_step=self.step,
            first_loss=float(np.mean(head)) if head else float("nan"),
            last_loss=float(np.mean(tail)) if tail else float("nan"),
            samples_per_s=samples / max(elapsed, 1e-9),
            checkpoint=str(last_path),
            mlflow_run_id=self.tracker.run_id or "",
            resumed_from=self.resumed_from,
        )
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        self.tracker.finish()
        return summary
