"""The trainer's checkpoints: resume or start from other weights, save, flush a background save.

Everything a resumed run needs to continue exactly where the uninterrupted run would be is in
the checkpoint: weights, optimizer and schedule, the loader position and all RNG states. Every rank
writes its own pieces of the canonical state (the sharded layout), on a background thread with
``train.async_save``; ``train.save_format=gathered`` then rewrites each step in the gathered
layout (the offline merge, run by rank 0). Any layout resumes from any other, and from the
gathered checkpoints of earlier runs. ``init_from``
(``model.init_from`` and unified mode's context sources) loads weights only, at step 0.

:class:`RunCheckpoints` works on its :class:`~wallwm_pretrain.trainer.loop.Trainer`'s parts
(model, optimizer, loader, step, loss history, skip book, tracker) rather than copies of them:
it is the trainer's checkpoint half, kept apart so that the loop reads in one screen.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from wallwm_pretrain import checkpoint as ckpt
from wallwm_pretrain.checkpoint.background import BackgroundSave
from wallwm_pretrain.components import component_patterns
from wallwm_pretrain.config import to_yaml
from wallwm_pretrain.data.badinput import merge_problems
from wallwm_pretrain.handoff import handoff_report, init_sources, shape_mismatches
from wallwm_pretrain.checkpoint.canonical import canonical_shape, load_canonical
from wallwm_pretrain.parallel.parallelize import unwrap_model
from wallwm_pretrain.checkpoint.rank_pieces import load_rank_pieces, rank_pieces
from wallwm_pretrain.parallel.state import gather_per_dp_rank, save_group
from wallwm_pretrain.resilience.agree import agree
from wallwm_pretrain.resilience.nonfinite import NonFiniteError
from wallwm_pretrain.trainer.rng import rng_state, set_rng_state


log = logging.getLogger("wallwm_pretrain")


class RunCheckpoints:
    """Resume, init_from, save and flush for one trainer (see the module docstring)."""

    def __init__(self, trainer: Any) -> None:
        # the Trainer of trainer/loop.py, which imports this module: not imported back
        self.t = trainer
        self.save_group = save_group(trainer.ctx, trainer.cfg.parallel.save_timeout_s)  # sharded saves talk here
        self.background = BackgroundSave()

    # -- starting -----------------------------------------------------------------------
    def resume_or_init(self) -> Optional[str]:
        """Resume from the run's checkpoint (``train.resume``), else start from ``model.init_from``
        and the context sources' weights, if any. Returns the MLflow run id to continue, if any."""
        t, cfg = self.t, self.t.cfg
        path = ckpt.resolve_resume(t.run_dir, cfg.train.resume)
        stale = ckpt.find_latest(t.run_dir) if cfg.train.resume == "none" else None
        if stale is not None:
            log.warning(
                "train.resume=none starts over, but %s already holds checkpoints of an earlier run up to %s; a "
                "later train.resume=auto takes the newest checkpoint there, which may be one of those: use "
                "another train.run_name or remove them", t.run_dir, stale.name,
            )
        if path is not None:
            t.watchdog.phase("load", 0)
            run_id = self.restore(path)
            t.resumed_from = str(path)
            return run_id
        if cfg.model.init_from or cfg.model.context.conditioner_from or cfg.model.context.staircase_from:
            self.init_from()
        return None

    def init_from(self) -> None:
        """Start from another run's weights (``model.init_from``): a weights folder, a previous
        training stage's checkpoint (step or run folder) or an export; model weights only, step 0,
        fresh optimizer, schedule and loader. Unified mode's context sources add the conditioner's
        and the Staircase branch's weights of their own training stages
        (``model.context.conditioner_from`` / ``staircase_from``, under ``context.``). Names are
        checked against the whole model's (:mod:`wallwm_pretrain.handoff` says which differences
        ``model.init_from_partial`` allows), shapes always; the report of loaded / newly
        initialised / unused tensors per component is logged and written to
        ``<run>/init_from.json``."""
        t = self.t
        weights, where = init_sources(t.cfg.model)
        own = {n: v for c in t.chunks for n, v in c.state_dict().items()}
        params = {n: p for c in t.chunks for n, p in c.named_parameters()}
        own_shapes = {n: canonical_shape(params[n], t.ctx) if n in params else tuple(v.shape)
                      for n, v in own.items() if isinstance(v, torch.Tensor)}
        bad = shape_mismatches({n: tuple(v.shape) for n, v in weights.items()}, own_shapes)
        names = set(own)
        if t.ctx.pp > 1:  # the whole model's names and every pipeline rank's mismatches (all fail alike)
            gathered: list = [None] * t.ctx.pp
            torch.distributed.all_gather_object(gathered, (sorted(own), bad), group=t.ctx.pg_collection.pp)
            names = {n for part, _ in gathered for n in part}
            bad = sorted({b for _, part in gathered for b in part})
        if bad:
            raise ckpt.CheckpointError(
                f"model.init_from={where}: {len(bad)} tensors have another shape in {where} than in this model: "
                + "; ".join(bad[:3]) + " (weights of another model config?)"
            )
        m = t.cfg.model
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
                f"model.init_from={where} ({where}): " + "; ".join(lines)
                + " (weights of another model config? set model.init_from_partial=true to start those from their "
                "fresh initialisation and skip the unused ones)"
            )
        state = {n: v for n, v in weights.items() if n in names}
        for name, value in own.items():
            if name.endswith("._extra_state") and name not in state:
                state[name] = value
        try:
            load_canonical(t.model, None, state, None, t.ctx, keep_missing=m.init_from_partial)
        except (KeyError, RuntimeError) as exc:
            raise ckpt.CheckpointError(f"model.init_from={where}: {exc}") from None
        t.handoff = report
        if t.ctx.is_main:
            log.info("%s", report.render())
            (t.run_dir / "init_from.json").write_text(json.dumps(report.as_dict(), indent=1) + "\n")

    def restore(self, path: Path) -> Optional[str]:
        """Load the run's state from ``path``; returns the MLflow run id recorded there, if any."""
        t = self.t
        # each pipeline rank takes its layers, each TP rank its slices, each Muon owner its
        # matrices' state, from the canonical state: read box by box from a sharded checkpoint,
        # cut from the whole state of a gathered one
        if ckpt.is_sharded(path):
            reader = ckpt.sharded_reader(path)
            load_rank_pieces(t.model, t.optim, reader, reader.model_extra, reader.optimizer, t.ctx)
            trainer, _ = ckpt.load_trainer_state(path)
        else:
            state = ckpt.load_checkpoint(path)
            load_canonical(t.model, t.optim, state.model, state.optimizer, t.ctx)
            trainer = state.trainer
        t.step = int(trainer["step"])
        loaders = trainer["loaders"]  # one position per data-parallel rank
        if len(loaders) == t.ctx.dp:
            t.loader.load_state_dict(loaders[t.ctx.dp_rank])
        else:
            epoch = max(int(s["epoch"]) for s in loaders)
            log.warning(
                "checkpoint has %d data-parallel loader positions, this run %d: data restarts at the "
                "beginning of epoch %d", len(loaders), t.ctx.dp, epoch + 1,
            )
            # problems already counted stay counted, whichever rank found them
            t.loader.load_state_dict({"epoch": epoch + 1, "batches_in_epoch": 0, **merge_problems(loaders)})
        saved = json.loads(trainer["history"])
        t.history = {k: [tuple(p) for p in saved.get(k, [])] for k in t.loss_keys}
        if "skipped" in trainer:  # checkpoints written before skipped steps were counted lack it
            t.skips.load_state_dict(json.loads(trainer["skipped"]))
        set_rng_state(trainer["rng"])
        log.info("resumed from %s at step %d", path, t.step)
        return trainer.get("mlflow_run_id") or None

    # -- saving -------------------------------------------------------------------------
    def _check_finite_weights(self) -> None:
        """Refuse to save a non-finite state (a collective: every rank checks its own pieces)."""
        t = self.t
        bad = [n for m in t.model for n, p in unwrap_model(m).named_parameters() if not torch.isfinite(p).all()]
        verdict = agree(bool(bad), "", t.device)
        if verdict.nonfinite:
            where = f"rank {t.ctx.rank}: {bad[:3]}" if bad else "another rank"
            raise NonFiniteError(
                f"not saving step {t.step} to {t.run_dir}: non-finite weights ({where}); the newest "
                "complete checkpoint is left as it is"
            )

    def _trainer_state(self) -> Optional[dict]:
        """The loop's state (step, loader positions, layout, RNG, history, MLflow run, skips); rank 0's."""
        t = self.t
        loaders = gather_per_dp_rank(t.loader.state_dict(), t.ctx)
        if not t.ctx.is_main:
            return None
        return {
            "step": t.step,
            "loaders": loaders,
            "layout": {"tp": t.ctx.tp, "pp": t.ctx.pp, "dp": t.ctx.dp, "vpp": t.ctx.vpp, "cp": t.ctx.cp,
                       "microbatches": t.cfg.train.microbatches},
            "rng": rng_state(),
            "history": json.dumps(t.history),
            "mlflow_run_id": t.tracker.run_id or "",
            "skipped": json.dumps(t.skips.state_dict()),
        }

    def save(self, final: bool = False) -> Optional[Path]:
        """Save the run at this step boundary (a collective); see :meth:`Trainer.save`."""
        t = self.t
        t.watchdog.phase("save", t.step)
        started = time.perf_counter()
        self.flush()
        # distributed Muon may still be returning the last step's updates (they land just before
        # each layer's next forward); a checkpoint reads the parameters now
        t.optim.finish_param_sync()
        self._check_finite_weights()
        trainer_state = self._trainer_state()
        train = t.cfg.train
        # one save path: every rank writes its pieces (train.save_format=gathered adds the merge)
        background = train.async_save and not final
        pieces, description = rank_pieces(t.model, t.optim, t.ctx)
        pieces = ckpt.copy_off(pieces, background)
        rank, world = t.ctx.rank, t.ctx.world_size
        tmp, folder = ckpt.begin_sharded_save(t.run_dir, t.step, rank, world, self.save_group)
        write = partial(
            ckpt.finish_sharded_save, tmp, folder, rank=rank, world=world, group=self.save_group, pieces=pieces,
            stage=description, trainer=trainer_state, config_yaml=to_yaml(t.cfg) if t.ctx.is_main else "",
            keep_last=train.keep_checkpoints, keep_every=train.keep_every,
        )
        if background:
            self.background.start(write)
            t.deadline.note_save(time.perf_counter() - started)
            return None
        path = write()
        if train.save_format == "gathered":
            path = self._merge(path)
        t.deadline.note_save(time.perf_counter() - started)
        return path

    def _merge(self, path: Path) -> Path:
        """``train.save_format=gathered``: rank 0 rewrites the step just saved in the gathered
        layout (the offline merge, ``python -m wallwm_pretrain.checkpoint merge``, in place) and
        tells every rank the outcome over the save group (its timeout is parallel.save_timeout_s).

        Raises:
            CheckpointError: on every rank when the merge failed; the sharded step stays, complete.
        """
        t, train = self.t, self.t.cfg.train
        outcome: list = [None]
        if t.ctx.is_main:
            try:
                merged = ckpt.merge_checkpoint(path, t.run_dir, keep_last=train.keep_checkpoints,
                                               keep_every=train.keep_every)
                outcome = [(True, str(merged))]
            except Exception as exc:  # every rank must hear of it, not wait for rank 0
                outcome = [(False, f"{type(exc).__name__}: {exc}")]
        if t.ctx.world_size > 1:
            group = self.save_group
            torch.distributed.broadcast_object_list(outcome, src=torch.distributed.get_global_rank(group, 0), group=group)
        ok, what = outcome[0]
        if not ok:
            raise ckpt.CheckpointError(
                f"train.save_format=gathered: writing step {t.step} in the gathered layout failed ({what}); "
                f"the sharded checkpoint {path} is complete and loads"
            )
        return Path(what)

    def flush(self) -> Optional[Path]:
        """Wait for the background save in flight, if any (its error is raised here)."""
        if not self.background.in_flight:
            return None
        path = self.background.wait()
        # the stop before the wall-time limit must leave room for a whole write
        self.t.deadline.note_save(self.background.seconds)
        return path
