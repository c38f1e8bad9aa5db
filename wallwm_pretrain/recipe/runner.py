"""Run a recipe's stages in order, each as its own ``python -m wallwm_pretrain.train`` process.

A stage whose final checkpoint (at its ``train.steps``) is complete is skipped; a stage with an
earlier checkpoint resumes from it (``train.resume=auto``); a stage that starts from an earlier
one (``init_from``) gets that stage's final checkpoint folder as ``model.init_from`` (weights
only). A stage that ends before its last step (a signal, the wall-time budget,
``train.stop_after``) ends the recipe: run it again to continue where it stopped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Optional, Sequence

from wallwm_pretrain.config import ConfigError
from wallwm_pretrain.recipe.tracking import recipe_tracker
from wallwm_pretrain.resilience.exit import EXIT_FILE_ENV
from wallwm_pretrain.tracking import PARENT_RUN_ENV
from wallwm_pretrain.recipe.spec import Recipe, Stage
from wallwm_pretrain.recipe.state import StageState, stage_overrides, stage_state

EXIT_AGAIN = 75  # as the trainer's: saved, not finished; run again to continue


def init_source(recipe: Recipe, stage: Stage, states: dict[str, StageState], for_slurm: bool = False) -> str:
    """``model.init_from`` of a stage: an earlier stage's final checkpoint folder (its run folder
    when planning a Slurm chain, where it is not written yet), a path as given, or ''."""
    return stage_source(stage.init_from, stage, states, for_slurm)


def source_overrides(recipe: Recipe, stage: Stage, states: dict[str, StageState], for_slurm: bool = False) -> list[str]:
    """``model.init_from`` and the ``model.context.<key>_from`` of a stage, as overrides."""
    out = []
    source = init_source(recipe, stage, states, for_slurm)
    if source:
        out.append(f"model.init_from={source}")
    for key, name in stage.context_from.items():
        out.append(f"model.context.{key}_from={stage_source(name, stage, states, for_slurm)}")
    return out


def stage_source(name: str, stage: Stage, states: dict[str, StageState], for_slurm: bool = False) -> str:
    """The weights ``name`` stands for: an earlier stage's final checkpoint (run folder for a
    Slurm chain), else ``name`` itself as a path ('' stays '')."""
    if not name:
        return ""
    if name not in states:
        return name
    prev = states[name]
    if for_slurm:
        return str(prev.run_dir)  # afterok: the previous job finished, its newest checkpoint is the final one
    if not prev.done:
        raise ConfigError(f"stage {stage.name} starts from stage {prev.stage.name}, which has not finished "
                          f"(step {prev.step} of {prev.steps} in {prev.run_dir})")
    return str(prev.checkpoint)


def train_command(stage: Stage, overrides: Sequence[str], nproc: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "wallwm_pretrain.train"]
    for c in stage.config:
        cmd += ["--config", c]
    cmd += [*overrides, "train.resume=auto"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *cmd[1:]]
    return cmd


def run_recipe(recipe: Recipe, extra: Sequence[str] = (), nproc: int = 1, env: Optional[dict] = None,
               out=sys.stdout) -> tuple[int, list[StageState]]:
    """Run the stages that are not complete, in order.

    Returns:
        (exit code: 0 all stages complete, 75 a stage stopped before its end (run again), else
        the failing stage's code; the states of all stages, in order)
    """
    states: dict[str, StageState] = {}
    for stage in recipe.stages:
        states[stage.name] = stage_state(recipe, stage, extra)
    env = dict(env or os.environ)
    tracker = recipe_tracker(recipe, states[recipe.stages[0].name].cfg)
    if tracker is not None:  # each stage's MLflow run nests under the recipe's
        env[PARENT_RUN_ENV] = tracker.run_id
    code = 0
    for stage in recipe.stages:
        state = states[stage.name]
        if code:
            state.action = "not run"
            continue
        if state.done:
            state.action = "skipped (complete)"
            print(f"== stage {stage.name}: complete at step {state.step} ({state.checkpoint}): skipped", file=out,
                  flush=True)
            continue
        overrides = stage_overrides(recipe, stage, extra)
        sources = source_overrides(recipe, stage, states)
        overrides += sources
        source = ", ".join(o.split("=", 1)[1] for o in sources)
        state.action = f"resumed from {state.step}" if state.checkpoint else "ran"
        print(f"== stage {stage.name}: {'resuming at step ' + str(state.step) if state.checkpoint else 'starting'}"
              f" -> {state.steps} steps in {state.run_dir}" + (f", weights from {source}" if source else ""),
              file=out, flush=True)
        if stage.note:
            print(f"   {stage.note}", file=out, flush=True)
        cmd = train_command(stage, overrides, nproc)
        print("   " + shlex.join(cmd), file=out, flush=True)
        # torchrun reports any failing worker as 1: the trainer's own verdict comes back in the
        # exit record (finished | requeue | failed), as under launch/pretrain.sh
        record = state.run_dir.parent / f".{state.run_dir.name}.exit-status"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        rc = subprocess.run(cmd, env={**env, EXIT_FILE_ENV: str(record)}).returncode
        if rc != 0 and record.is_file() and record.read_text().startswith("requeue"):
            rc = EXIT_AGAIN
        states[stage.name] = new = stage_state(recipe, stage, extra)
        new.action = state.action
        if rc not in (0, EXIT_AGAIN):
            print(f"== stage {stage.name} failed (exit code {rc}); the recipe stops here", file=out, flush=True)
            code = rc
        elif not new.done:
            print(f"== stage {stage.name} stopped at step {new.step} of {new.steps}: run the recipe again to resume "
                  "it", file=out, flush=True)
            new.action += f", stopped at {new.step}"
            code = EXIT_AGAIN
    result = [states[s.name] for s in recipe.stages]
    if tracker is not None:
        from wallwm_pretrain.recipe.summary import render_summary

        tracker.log_text(render_summary(recipe.name, result), "recipe_summary.txt")
        for s in result:
            tracker.log_metrics({f"{s.stage.name}.step": s.step}, 0)
        if code == 0:
            tracker.finish()
    return code, result


def slurm_plan(recipe: Recipe, extra: Sequence[str] = ()) -> list[tuple[Stage, list[str]]]:
    """(stage, train overrides) of every stage not yet complete, for ``launch/recipe.sh``; a
    stage that starts from an earlier one reads that stage's run folder (its newest checkpoint,
    the final one once the job it depends on has ended well)."""
    states = {s.name: stage_state(recipe, s, extra) for s in recipe.stages}
    plan = []
    for stage in recipe.stages:
        if states[stage.name].done:
            continue
        overrides = stage_overrides(recipe, stage, extra) + ["train.resume=auto"]
        overrides += source_overrides(recipe, stage, states, for_slurm=True)
        plan.append((stage, overrides))
    return plan


def environment() -> dict:
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env
