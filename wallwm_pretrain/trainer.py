"""The trainer: builds the run from its config and runs the optimisation loop.

``Trainer.__init__`` reads as the pipeline of a run: process groups and device, model,
optimizer, data, resume from a checkpoint, tracking. ``Trainer.train`` then steps to
``train.steps``, logging one line per ``train.log_every`` steps, saving every
``train.save_every`` steps and at the end, and returns a :class:`RunSummary`.

Everything a resumed run needs to continue exactly where the uninterrupted run would be is in
the checkpoint: weights, optimizer and schedule, the loader position and all RNG states. By
default every rank writes its own pieces of the canonical state (``train.save_format``), on a
background thread with ``train.async_save``; any layout resumes from any other.

Surviving a cluster (``wallwm_pretrain.resilience``): after each forward and backward all ranks
agree, in one small collective, whether the step's loss and gradient norm were finite (if not,
every rank skips the update: weights, optimizer, schedule and step counter stay, the loader
moves on) and whether anyone was asked to stop (SIGUSR1, SIGTERM, the wall-time budget); a stop
saves at that step boundary and ends the run with ``stopped`` set, which ``train.py`` turns
into exit code 75. A watchdog thread ends the run naming rank, step and phase when a rank or
a peer stays in one phase too long.

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
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from megatron.core import parallel_state as ps
from tqdm import tqdm

from wallwm_pretrain import checkpoint as ckpt
from wallwm_pretrain.checkpoint.background import BackgroundSave
from wallwm_pretrain.components import component_patterns
from wallwm_pretrain.config import Config, flatten, to_yaml
from wallwm_pretrain.data import EventLoader
from wallwm_pretrain.data.badinput import merge_problems
from wallwm_pretrain.data.dims import resolve_data_dims
from wallwm_pretrain.handoff import handoff_report, init_sources, shape_mismatches
from wallwm_pretrain.model.flow_matching import noise_seed
from wallwm_pretrain.model.freeze import apply_train_parts, describe_train_parts
from wallwm_pretrain.optim import build_optimizer
from wallwm_pretrain.parallel import init_parallel
from wallwm_pretrain.parallel.canonical import canonical_checkpoint, canonical_shape, load_canonical
from wallwm_pretrain.parallel.parallelize import unwrap_model
from wallwm_pretrain.parallel.sharded import load_rank_pieces, rank_pieces
from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
from wallwm_pretrain.parallel.state import gather_per_dp_rank, optimizer_groups, save_group, sum_over_pipeline
from wallwm_pretrain.resilience.agree import agree
from wallwm_pretrain.resilience.nonfinite import NonFiniteError, SkipBook, is_finite
from wallwm_pretrain.resilience.stop import Deadline, StopRequests
from wallwm_pretrain.resilience.watchdog import Watchdog
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
    stopped: str = ""
    """Why the run stopped before its end step ('' = it reached it): a signal or 'wall time'."""
    skipped_steps: int = 0

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
        ]
        if self.skipped_steps:
            lines.append(f"  skipped updates  {self.skipped_steps} (non-finite loss or gradient)")
        if self.stopped:
            lines.append(f"  stopped          by {self.stopped} after saving; run again to continue (exit code 75)")
        lines += [
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
                                 timeout_s=par.timeout_s)
        self.device = self.ctx.device
        self.run_dir = cfg.train.run_dir
        self.save_group = save_group(self.ctx, par.save_timeout_s)  # sharded saves talk over their own group
        self.background = BackgroundSave()
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
        # the stage's frozen components (model.train_parts) get requires_grad False here, before
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

        # 5. resume: weights, optimizer, loader position, RNG, MLflow run
        self.step = 0
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in self.loss_keys}
        self.resumed_from = ""
        self.handoff = None  # the model.init_from report (HandoffReport), when the run started from one
        run_id = None
        path = ckpt.resolve_resume(self.run_dir, cfg.train.resume)
        stale = ckpt.find_latest(self.run_dir) if cfg.train.resume == "none" else None
        if stale is not None:
            log.warning(
                "train.resume=none starts over, but %s already holds checkpoints of an earlier run up to %s; a "
                "later train.resume=auto takes the newest checkpoint there, which may be one of those: use "
                "another train.run_name or remove them", self.run_dir, stale.name,
            )
        if path is not None:
            self.watchdog.phase("load", 0)
            run_id = self._restore(path)
            self.resumed_from = str(path)
        elif cfg.model.init_from or cfg.model.context.conditioner_from or cfg.model.context.staircase_from:
            self._init_from()
        self.watchdog.phase("setup", self.step)

        # 6. tracking (rank 0 only)
        self.tracker = build_tracker(cfg, self.ctx.rank, run_id)
        if run_id is None:
            self.tracker.log_params(flatten(cfg))
            self.tracker.log_params({f"params.{k}": v for k, v in self.param_counts.items()})
            # the stage: trained and frozen parameters per component (model.train_parts) and in all
            totals = {s: sum(v for k, v in self.part_counts.items() if k.startswith(f"{s}."))
                      for s in ("trained", "frozen")}
            self.tracker.log_params({f"params.{k}": v for k, v in {**self.part_counts, **totals}.items()})

    def _parameter_counts(self) -> dict[str, int]:
        """Parameters of the whole pipeline (this rank's tensor-parallel slices), per tower."""
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            for k, v in chunk.parameter_counts().items():
                counts[k] = counts.get(k, 0) + v
        return sum_over_pipeline(counts, self.ctx)

    # -- checkpoints --------------------------------------------------------------------
    def _init_from(self) -> None:
        """Start from another run's weights (``model.init_from``): a weights folder, a previous
        stage's checkpoint (step or run folder) or an export; model weights only, step 0, fresh
        optimizer, schedule and loader. Unified mode's context sources add the conditioner's and
        the Staircase branch's weights of their own stages (``model.context.conditioner_from`` /
        ``staircase_from``, under ``context.``). Names are checked against the whole model's
        (:mod:`wallwm_pretrain.handoff` says which differences ``model.init_from_partial``
        allows), shapes always; the report of loaded / newly initialised / unused tensors per
        component is logged and written to ``<run>/init_from.json``."""
        weights, where = init_sources(self.cfg.model)
        source = where
        own = {n: v for c in self.chunks for n, v in c.state_dict().items()}
        params = {n: p for c in self.chunks for n, p in c.named_parameters()}
        own_shapes = {n: canonical_shape(params[n], self.ctx) if n in params else tuple(v.shape)
                      for n, v in own.items() if isinstance(v, torch.Tensor)}
        bad = shape_mismatches({n: tuple(v.shape) for n, v in weights.items()}, own_shapes)
        names = set(own)
        if self.ctx.pp > 1:  # the whole model's names and every stage's mismatches (all stages fail alike)
            gathered: list = [None] * self.ctx.pp
            torch.distributed.all_gather_object(gathered, (sorted(own), bad),
                                                group=ps.get_pipeline_model_parallel_group())
            names = {n for part, _ in gathered for n in part}
            bad = sorted({b for _, part in gathered for b in part})
        if bad:
            raise ckpt.CheckpointError(
                f"model.init_from={source}: {len(bad)} tensors have another shape in {where} than in this model: "
                + "; ".join(bad[:3]) + " (weights of another model config?)"
            )
        m = self.cfg.model
        report = handoff_report(where, weights, names, component_patterns(m.kind, m.video_tower))
        if not m.init_from_partial and (report.unused or report.new):
            lines = []
            if report.unused:
                unused = [n for ns in report.unused.values() for n in ns]
                lines.append(f"{len(unused)} tensors of the source belong to no tensor of this model, e.g. {unused[:3]}")
            if report.new:
                new = [n for ns in report.new.values() for n in ns]
                lines.append(f"{len(new)} tensors of this model are not in the source, e.g. {new[:3]}")
            raise ckpt.CheckpointError(
                f"model.init_from={source} ({where}): " + "; ".join(lines)
                + " (weights of another model config? set model.init_from_partial=true to start those from their "
                "fresh initialisation and skip the unused ones)"
            )
        state = {n: v for n, v in weights.items() if n in names}
        for name, value in own.items():
            if name.endswith("._extra_state") and name not in state:
                state[name] = value
        try:
            load_canonical(self.model, None, state, None, self.ctx, keep_missing=m.init_from_partial)
        except (KeyError, RuntimeError) as exc:
            raise ckpt.CheckpointError(f"model.init_from={source}: {exc}") from None
        self.handoff = report
        if self.ctx.is_main:
            log.info("%s", report.render())
            (self.run_dir / "init_from.json").write_text(json.dumps(report.as_dict(), indent=1) + "\n")

    def _restore(self, path: Path) -> Optional[str]:
        # each stage takes its layers, each TP rank its slices, each Muon owner its matrices'
        # state, from the canonical state: read box by box from a sharded checkpoint, cut from
        # the whole state of a gathered one
        if ckpt.is_sharded(path):
            reader = ckpt.sharded_reader(path)
            load_rank_pieces(self.model, self.optim, reader, reader.model_extra, reader.optimizer, self.ctx)
            trainer, _ = ckpt.load_trainer_state(path)
        else:
            state = ckpt.load_checkpoint(path)
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
        self.history = {k: [tuple(p) for p in saved.get(k, [])] for k in self.loss_keys}
        if "skipped" in trainer:  # checkpoints written before skipped steps were counted lack it
            self.skips.load_state_dict(json.loads(trainer["skipped"]))
        set_rng_state(trainer["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return trainer.get("mlflow_run_id") or None

    def _check_finite_weights(self) -> None:
        """Refuse to save a non-finite state (a collective: every rank checks its own pieces)."""
        bad = [n for m in self.model for n, p in unwrap_model(m).named_parameters() if not torch.isfinite(p).all()]
        verdict = agree(bool(bad), "", self.device)
        if verdict.nonfinite:
            where = f"rank {self.ctx.rank}: {bad[:3]}" if bad else "another rank"
            raise NonFiniteError(
                f"not saving step {self.step} to {self.run_dir}: non-finite weights ({where}); the newest "
                "complete checkpoint is left as it is"
            )

    def save(self, final: bool = False) -> Optional[Path]:
        """Save the run at this step boundary (a collective).

        ``train.save_format=sharded``: every rank writes its own pieces of the canonical
        (TP=1, PP=1) state and rank 0 commits the index and manifest last; with
        ``train.async_save`` the write runs in the background (``final`` saves, at a stop or the
        end of the run, never do). ``gathered``: rank 0 gathers the canonical state and writes it.
        Any save in flight is finished first.

        Returns:
            The checkpoint folder once committed; None for a background save (and on ranks
            other than 0 for a gathered save).

        Raises:
            NonFiniteError: some rank's weights are not finite (nothing is written).
            CheckpointError: this or the previous (background) save failed on some rank.
        """
        self.watchdog.phase("save", self.step)
        started = time.perf_counter()
        self.flush_save()
        # distributed Muon may still be returning the last step's updates (they land just before
        # each layer's next forward); a checkpoint reads the parameters now
        self.optim.finish_param_sync()
        self._check_finite_weights()
        loaders = gather_per_dp_rank(self.loader.state_dict(), self.ctx)
        trainer_state = None
        if self.ctx.is_main:
            trainer_state = {
                "step": self.step,
                "loaders": loaders,
                "layout": {"tp": self.ctx.tp, "pp": self.ctx.pp, "dp": self.ctx.dp, "vpp": self.ctx.vpp,
                           "microbatches": self.cfg.train.microbatches},
                "rng": rng_state(),
                "history": json.dumps(self.history),
                "mlflow_run_id": self.tracker.run_id or "",
                "skipped": json.dumps(self.skips.state_dict()),
            }
        train = self.cfg.train
        if train.save_format == "gathered":
            model_state, optim_state = canonical_checkpoint(self.model, self.optim, self.ctx)
            path = None
            if self.ctx.is_main:
                path = ckpt.save_checkpoint(
                    self.run_dir, self.step, model=model_state, optimizer=optim_state, trainer=trainer_state,
                    config_yaml=to_yaml(self.cfg), keep_last=train.keep_checkpoints, keep_every=train.keep_every,
                )
            self._wait_for_save(started)
            return path
        background = train.async_save and not final
        pieces, stage = rank_pieces(self.model, self.optim, self.ctx)
        pieces = ckpt.copy_off(pieces, background)
        rank, world = self.ctx.rank, self.ctx.world_size
        tmp, folder = ckpt.begin_sharded_save(self.run_dir, self.step, rank, world, self.save_group)
        write = partial(
            ckpt.finish_sharded_save, tmp, folder, rank=rank, world=world, group=self.save_group, pieces=pieces,
            stage=stage, trainer=trainer_state, config_yaml=to_yaml(self.cfg) if self.ctx.is_main else "",
            keep_last=train.keep_checkpoints, keep_every=train.keep_every,
        )
        if background:
            self.background.start(write)
            self.deadline.note_save(time.perf_counter() - started)
            return None
        path = write()
        self.deadline.note_save(time.perf_counter() - started)
        return path

    def flush_save(self) -> Optional[Path]:
        """Wait for the background save in flight, if any (its error is raised here)."""
        if not self.background.in_flight:
            return None
        path = self.background.wait()
        # the stop before the wall-time limit must leave room for a whole write
        self.deadline.note_save(self.background.seconds)
        return path

    def _wait_for_save(self, started: float) -> None:
        # every rank waits for rank 0's write in the "save" phase (the watchdog allows
        # parallel.save_timeout_s there), and every rank's deadline learns how long a save takes;
        # the barrier itself is bounded by parallel.timeout_s, which must exceed a save
        if self.ctx.world_size > 1:
            torch.distributed.barrier()
        self.deadline.note_save(time.perf_counter() - started)

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
        cfg = self.cfg.train
        start_step = self.step
        end_step = cfg.stop_after or cfg.steps
        if self.ctx.is_main:
            counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.param_counts.items())
            log.info("parameters: %s", counts)
            log.info("components (model.train_parts=%s):\n%s", list(self.cfg.model.train_parts),
                     describe_train_parts(self.part_counts))
            log.info("optimizer groups: %s", self.optim.param_groups_summary())
        losses: list[float] = []
        samples, t_start = 0, time.perf_counter()
        window_samples, window_tokens, window_flops, t_window = 0, 0, 0, time.perf_counter()
        peak = peak_tflops(self.device, cfg.peak_tflops)
        last_path: Optional[Path] = None
        # a signal or the deadline during set-up stops before the first step
        stopped = agree(False, self.stop_reason(), self.device).stop
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            # a bar only on a terminal; logs and CI get the per-log_every lines alone
            disable=not (self.ctx.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
            desc="train",
        )
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
            losses.append(m["loss"])
            samples += m["samples"]
            window_samples += m["samples"]
            window_tokens += m["tokens"]
            window_flops += m["model_flops"]
            for k in self.loss_keys:
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
                        f"step {self.step:6d} | loss {m['loss']:.4f} ("
                        + ", ".join(f"{k.removeprefix('loss_')} {m[k]:.4f}" for k in self.loss_keys[1:])
                        + f") | grad {m['grad_norm']:.3f} | "
                        + " ".join(f"{k} {v:.2e}" for k, v in self.optim.lrs().items())
                        + f" | {m['samples_per_s']:.1f} samples/s | pad eff {m['padding_efficiency']:.2f}"
                        + f" | {memory_label(self.device)} {m['memory_gib']:.2f} GiB"
                        + (f" | MFU {m['mfu']:.3f}" if "mfu" in m else "")
                    )
                window_samples, window_tokens, window_flops, t_window = 0, 0, 0, time.perf_counter()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end_step and not stopped:
                last_path = self.save()
        bar.close()
        elapsed = time.perf_counter() - t_start
        if self.step >= end_step:
            stopped = ""  # the request came with the last step: the run is complete anyway
        if stopped and self.ctx.is_main:
            log.warning("stop requested (%s) at step %d of %d: saving, then exiting with code 75 to be run again",
                        stopped, self.step, cfg.steps)
        if self.step > start_step:  # periodic saves skip the last step: it is saved here, by all ranks
            last_path = self.save(final=True)  # waits for a background save in flight first
        else:
            self.watchdog.phase("save", self.step)
            self.flush_save()
        last_path = last_path or ckpt.find_latest(self.run_dir)  # nothing new if already complete
        self.optim.finish_param_sync()  # whoever reads the model after the run sees the last step
        self.watchdog.phase("finish", self.step)
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
            stopped=stopped,
            skipped_steps=self.skips.total,
        )
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        self.tracker.finish()
        return summary
