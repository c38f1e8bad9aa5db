"""Where a recipe stage's run folder stands: its config, its newest complete checkpoint, what was done."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from wallwm_pretrain.config import Config, ConfigError, load_config
from wallwm_pretrain.recipe.spec import Recipe, Stage


@dataclass
class StageState:
    """Where a stage's run folder stands."""

    stage: Stage
    cfg: Config
    run_dir: Path
    step: int  # newest complete checkpoint's step (0 = none)
    checkpoint: Optional[Path]
    action: str = ""  # what this invocation did: skipped, ran, resumed from N, not run
    extra: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.cfg.train.steps

    @property
    def done(self) -> bool:
        return self.checkpoint is not None and self.step >= self.steps


def stage_overrides(recipe: Recipe, stage: Stage, extra: Sequence[str]) -> list[str]:
    """The stage's overrides, the command line's, then the run folder the runner gives it."""
    return [*stage.overrides, *extra, f"train.runs_root={recipe.runs_root}",
            f"train.run_name={recipe.run_name(stage)}"]


def stage_state(recipe: Recipe, stage: Stage, extra: Sequence[str]) -> StageState:
    """Load the stage's config (checked like any run's) and find its newest checkpoint."""
    from wallwm_pretrain.checkpoint import list_checkpoints

    try:
        cfg = load_config(stage.config, stage_overrides(recipe, stage, extra))
    except ConfigError as exc:
        raise ConfigError(f"{recipe.path}: stage {stage.name}: {exc}") from None
    run_dir = cfg.train.run_dir
    done = list_checkpoints(run_dir)
    step, folder = done[-1] if done else (0, None)
    return StageState(stage, cfg, run_dir, step, folder)
