"""The training loop: a :class:`Trainer` built from the config, stepping to ``train.steps``.

``Trainer.__init__`` reads as the pipeline of a run: process groups and device, model,
optimizer, data, resume from a checkpoint, tracking. ``Trainer.train`` then steps to
``train.steps`` (or ``train.stop_after``), saving every ``train.save_every`` steps and at the
end, and returns a :class:`~wallwm_pretrain.trainer.summary.RunSummary`. Checkpoints live in
:mod:`.checkpointing`, what the run prints and tracks in :mod:`.run_log`, the predicted video
of held-out events every ``train.video_eval_every`` steps in :mod:`.video_eval`.

Surviving a cluster (``wallwm_pretrain.resilience``): after each forward and backward all ranks
agree, in one small collective, whether the step's loss and gradient norm were finite (if not,
every rank skips the update: weights, optimizer, schedule and step counter stay, the loader
moves on) and whether anyone was asked to stop (SIGUSR1, SIGTERM, the wall-time budget); a stop
saves at that step boundary and ends the run with ``stopped`` set, which ``train.py`` turns
into exit code 75. A watchdog thread ends the run naming rank, step and phase when a rank or
a peer stays in one phase too long.

Every layout (TP x PP x DP, with or without virtual pipeline chunks) takes one path: this
rank's model chunks, each in megatron DDP, driven by megatron-core's schedule for the layout
(``wallwm_pretrain.parallel.pipeline``), with ``train.microbatches`` microbatches per step.
The flow noise of a step is drawn for the rank's whole batch from (seed, step, data-parallel
rank) and each microbatch takes its rows, so splitting a batch into microbatches, or the model
over pipeline ranks, changes no draw.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from wallwm_pretrain import checkpoint as ckpt
from wallwm_pretrain.config import Config, flatten, to_yaml
from wallwm_pretrain.data import EventLoader
from wallwm_pretrain.data.dims import resolve_data_dims
from wallwm_pretrain.model.flow_matching import noise_seed
from wallwm_pretrain.model.freeze import apply_train_parts
from wallwm_pretrain.optim import build_optimizer
from wallwm_pretrain.parallel import init_parallel
from wallwm_pretrain.parallel.parallelize import unwrap_model
from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
from wallwm_pretrain.parallel.state import optimizer_groups, sum_over_pipeline
from wallwm_pretrain.resilience.agree import agree
from wallwm_pretrain.resilience.exit import restart_attempt
from wallwm_pretrain.resilience.nonfinite import NonFiniteError, SkipBook, is_finite
from wallwm_pretrain.resilience.stop import Deadline, StopRequests
from wallwm_pretrain.resilience.watchdog import Watchdog
from wallwm_pretrain.tracking import build_tracker
from wallwm_pretrain.trainer.checkpointing import RunCheckpoints
from wallwm_pretrain.trainer.run_log import RunLog
from wallwm_pretrain.trainer.summary import RunSummary
from wallwm_pretrain.trainer.video_eval import VideoEval

log = logging.getLogger("wallwm_pretrain")


class Trainer:
    def __init__(self, cfg: Config, stop_requests: Optional[StopRequests] = None) -> None:
        # the model's data dims (``auto``) from the shards' index.json, checked before any work
        self.cfg = cfg = resolve_data_dims(cfg)
        # 0. stop requests first: a signal during the minutes of set-up is kept and acted on at
        # the first step boundary (the handler only sets a flag); train.py installs them before
        # its heavy imports and passes them in
        self._owns_stop_requests = stop_requests is None
        self.stop_requests = stop_requests or StopRequests()
        self.deadline = Deadline(cfg.train.max_wall_time_s, cfg.train.exit_margin_s)
        self.skips = SkipBook(cfg.train.max_skipped_steps, cfg.train.max_consecutive_skipped)
        self.watchdog: Optional[Watchdog] = None
        try:
            self._build(cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the watchdog and restore the signal handlers this trainer installed (idempotent);
        handlers passed in stay until their owner closes them, so a late signal during the
        process's own shutdown still only sets a flag."""
        if self.watchdog is not None:
            self.watchdog.close()
        if self._owns_stop_requests:
            self.stop_requests.close()

    def _build(self, cfg: Config) -> None:
        # 1. process groups and device (megatron-core state; CPU patches when there is no GPU)
        par = cfg.parallel
        self.ctx = init_parallel(par.tp, par.pp, cfg.train.device, cfg.train.seed, vpp=par.vpp,
                                 timeout_s=par.timeout_s, cp=par.cp)
        self.device = self.ctx.device
        self.run_dir = cfg.train.run_dir
        self.checkpoints = RunCheckpoints(self)  # its save group is created here, with the others
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
        # the training stage's frozen components (model.train_parts) get requires_grad False here, before
        # DDP wrapping and the optimizer: in no bucket, in neither Muon nor AdamW, no gradient
        self.part_counts = sum_over_pipeline(apply_train_parts(self.chunks, cfg.model), self.ctx)
        self.model = parallelize_chunks(self.chunks, self.ctx)
        self.schedule = PipelineSchedule(self.model, self.ctx, cfg.train.microbatches, autocast)
        self.loss_keys = self.schedule.loss_keys  # the towers' or the conditioner's
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
            cfg.data, cfg.model.frame_stride, cfg.model.caption_max_bytes, self.ctx.dp_rank, self.ctx.dp,
            video_input=cfg.model.video_input,
        )
        # the config and the data are checked: only now does the run folder exist (the resolved
        # config in it holds the dims the model was built with)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        # a hang from here on ends the run naming the rank, step and phase (collectives before
        # it are bounded by parallel.timeout_s)
        self.watchdog = Watchdog(self.run_dir / "heartbeat", self.ctx.rank, self.ctx.world_size, par.timeout_s,
                                 par.save_timeout_s, par.heartbeat_s)

        # 5. resume: weights, optimizer, loader position, RNG, MLflow run; or start from other weights
        self.step = 0
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in self.loss_keys}
        self.resumed_from = ""
        self.handoff = None  # the model.init_from report (HandoffReport), when the run started from one
        run_id = self.checkpoints.resume_or_init()
        self.watchdog.phase("setup", self.step)

        # 6. tracking (rank 0 only)
        self.tracker = build_tracker(cfg, self.ctx.rank, run_id)
        if run_id is None:
            self.tracker.log_params(flatten(cfg))
            self.tracker.log_params({f"params.{k}": v for k, v in self.param_counts.items()})
            # the training stage: trained and frozen parameters per component (model.train_parts) and in all
            totals = {s: sum(v for k, v in self.part_counts.items() if k.startswith(f"{s}."))
                      for s in ("trained", "frozen")}
            self.tracker.log_params({f"params.{k}": v for k, v in {**self.part_counts, **totals}.items()})
        self._note_restart()

    def _note_restart(self) -> None:
        """A worker that torchrun started again after a failure says so, with how the previous
        attempt ended, in the log and in MLflow (``restart.N.*`` params, metric ``restarts``)."""
        restart = restart_attempt()
        if restart is None:
            return
        attempt, budget, before = restart
        where = f"resumed from {self.resumed_from} at step {self.step}" if self.resumed_from else \
            "no checkpoint yet: started over"
        log.warning("restart %d of %d (torchrun --max-restarts) after: %s; %s", attempt, budget, before, where)
        self.tracker.log_params({f"restart.{attempt}.after": before,
                                 f"restart.{attempt}.resumed_from": self.resumed_from or "none"})
        self.tracker.log_metrics({"restarts": float(attempt)}, self.step)

    def _parameter_counts(self) -> dict[str, int]:
        """Parameters of the whole pipeline (this rank's tensor-parallel slices), per tower."""
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            for k, v in chunk.parameter_counts().items():
                counts[k] = counts.get(k, 0) + v
        return sum_over_pipeline(counts, self.ctx)

    # -- checkpoints (wallwm_pretrain.trainer.checkpointing) -----------------------------
    @property
    def background(self):
        """The background save of ``train.async_save`` (``in_flight``, ``wait``)."""
        return self.checkpoints.background

    def save(self, final: bool = False) -> Optional[Path]:
        """Save the run at this step boundary (a collective).

        Every rank writes its own pieces of the canonical (TP=1, PP=1) state and rank 0 commits
        the index and manifest last; with ``train.async_save`` the write runs in the background
        (``final`` saves, at a stop or the end of the run, never do). ``train.save_format=gathered``
        then has rank 0 rewrite the step in the gathered layout (the offline merge). Any save in
        flight is finished first.

        Returns:
            The checkpoint folder once committed; None for a background save (and on ranks
            other than 0 for a gathered save).

        Raises:
            NonFiniteError: some rank's weights are not finite (nothing is written).
            CheckpointError: this or the previous (background) save failed on some rank.
        """
        return self.checkpoints.save(final)

    def flush_save(self) -> Optional[Path]:
        """Wait for the background save in flight, if any (its error is raised here)."""
        return self.checkpoints.flush()

    # -- the loop -----------------------------------------------------------------------
    def next_batch(self):
        """The next batch of this rank's loader, on the device."""
        return next(self.loader).to(self.device)

    def stop_reason(self) -> str:
        """This rank's reason to stop at the coming boundary: a signal, the deadline, or ''."""
        return self.stop_requests.reason or ("wall time" if self.deadline.reached() else "")

    def train_step(self) -> dict[str, float]:
        """One forward and backward, then, if every rank's loss and gradient norm are finite, one
        update (``self.step`` advances). The returned metrics carry ``skipped`` (1.0 when the
        update was skipped) and ``stop`` (the agreed reason to stop after this step, or '')."""
        self.watchdog.phase("data", self.step)
        batch = self.next_batch()
        self.watchdog.phase("step", self.step)
        for chunk in self.model:
            chunk.train()
        # Flow-matching draws depend only on (seed, step, data-parallel rank), see noise_seed.
        # Drawn for the whole batch; each microbatch takes its rows.
        self.noise_rng.manual_seed(noise_seed(self.cfg.train.seed, self.step, self.ctx.dp_rank))
        noise = self.chunks[0].sample_noise(batch, self.noise_rng)
        # forward and backward of all microbatches through the pipeline (megatron's schedule)
        out = self.schedule.run(batch, noise)
        grad_norm = self.optim.clip_grad_norm(self.cfg.optim.grad_clip)
        metrics = {k: float(out[k].detach()) for k in self.loss_keys}
        metrics["grad_norm"] = float(grad_norm)
        # one collective: skip on every rank if any rank saw a non-finite value; stop together
        verdict = agree(not is_finite(*metrics.values()), self.stop_reason(), self.device)
        if verdict.nonfinite:
            self.optim.zero_grad(set_to_none=True)
            line = self.skips.record(self.step, {k: metrics[k] for k in self.loss_keys}, metrics["grad_norm"])
            log.warning("%s (batch %s...)", line, batch.keys[:4])
            self.tracker.log_metrics({"skipped_steps": self.skips.total}, self.step)
        else:
            self.optim.step()
            self.optim.zero_grad(set_to_none=True)
            self.skips.applied()
            self.step += 1
        metrics["skipped"] = float(verdict.nonfinite)
        metrics["stop"] = verdict.stop
        metrics["padding_efficiency"] = batch.padding_efficiency()
        metrics["data/bad_samples"] = self.loader.bad_samples  # skipped within data.max_bad_samples
        metrics["samples"] = batch.size * self.ctx.dp  # global batch (every DP rank reads as much)
        metrics["tokens"] = int(batch.lengths.sum()) * self.ctx.dp
        # model FLOPs of the padded shapes this step computed, over all data-parallel ranks
        metrics["model_flops"] = self._train_flops(batch) * metrics["samples"]
        return metrics

    def _train_flops(self, batch) -> int:
        """Model FLOPs of one sample's training step at this batch's padded shapes (each model
        kind counts its own, for the whole model whichever pipeline slice this rank holds)."""
        return self.chunks[0].train_flops(batch)

    def train(self) -> RunSummary:
        """Step to ``train.stop_after`` or ``train.steps``, or until all ranks agree to stop."""
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> RunSummary:
        end_step = self.cfg.train.stop_after or self.cfg.train.steps
        save_every = self.cfg.train.save_every
        run_log = RunLog(self, end_step)
        video_eval = VideoEval(self)  # train.video_eval_every: predicted video of held-out events
        last_path: Optional[Path] = None
        # a signal or the deadline during set-up stops before the first step
        stopped = agree(False, self.stop_reason(), self.device).stop
        while self.step < end_step and not stopped:
            t_step = time.perf_counter()
            try:
                m = self.train_step()
            except RuntimeError as exc:  # gloo/NCCL errors: a peer died, or a collective timed out
                if self.ctx.world_size == 1 or isinstance(exc, NonFiniteError):
                    raise
                raise self.watchdog.failure(exc) from exc
            self.deadline.note_step(time.perf_counter() - t_step)
            stopped = m.pop("stop")
            if m.pop("skipped"):
                continue
            run_log.record(m)
            if video_eval.due(self.step):
                self.watchdog.phase("video_eval", self.step)
                video_eval.run(self.step)
            if save_every and self.step % save_every == 0 and self.step < end_step and not stopped:
                last_path = self.save()
        run_log.steps_done()
        if self.step >= end_step:
            stopped = ""  # the request came with the last step: the run is complete anyway
        if stopped:
            run_log.stop_requested(stopped)
        if self.step > run_log.start_step:  # periodic saves skip the last step: it is saved here, by all ranks
            last_path = self.save(final=True)  # waits for a background save in flight first
        else:
            self.watchdog.phase("save", self.step)
            self.flush_save()
        last_path = last_path or ckpt.find_latest(self.run_dir)  # nothing new if already complete
        self.optim.finish_param_sync()  # whoever reads the model after the run sees the last step
        self.watchdog.phase("finish", self.step)
        return run_log.finish(last_path, stopped)
