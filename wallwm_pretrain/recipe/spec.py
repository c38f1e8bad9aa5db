"""A recipe file: the training stages of WALL-WM, in order (``configs/recipes/*.yaml``).

    name: smoke                     # run folders are <runs_root>/<name>-<stage name>
    runs_root: runs                 # optional (default runs)
    stages:
      - name: 1_video
        config: [configs/smoke.yaml]          # one preset or several, merged in order
        overrides: [model.train_parts=[video_tower,caption_encoder], train.steps=60]
      - name: 2_action
        config: configs/smoke.yaml
        init_from: 1_video          # an earlier stage (its final checkpoint), a path, or empty
        context_from: {conditioner: 3_conditioner, staircase: 4_staircase}   # optional, unified mode:
                                    # model.context.<source>_from, each an earlier stage or a path
        overrides: [...]
        slurm: [--nodes=2]          # optional: extra sbatch options of this stage (launch/recipe.sh)
        note: ...                   # optional: printed before the stage runs

Each stage is an ordinary run of ``python -m wallwm_pretrain.train`` with these presets and
overrides, so it resumes like any run (``train.resume=auto``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wallwm_pretrain.config import ConfigError, read_yaml

STAGE_KEYS = {"name", "config", "overrides", "init_from", "context_from", "slurm", "note"}
CONTEXT_FROM_KEYS = ("conditioner", "staircase")
RECIPE_KEYS = {"name", "runs_root", "stages"}


@dataclass
class Stage:
    name: str
    config: list[str]
    overrides: list[str] = field(default_factory=list)
    init_from: str = ""
    """An earlier stage's name (its final checkpoint), a path, or '' (the presets' own)."""
    slurm: list[str] = field(default_factory=list)
    note: str = ""
    context_from: dict[str, str] = field(default_factory=dict)
    """Unified mode's context weights: ``conditioner`` / ``staircase`` -> an earlier stage's name
    or a path, passed as ``model.context.<key>_from``."""


@dataclass
class Recipe:
    name: str
    runs_root: str
    stages: list[Stage]
    path: Path

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def run_name(self, stage: Stage) -> str:
        return f"{self.name}-{stage.name}"


def _strings(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise ConfigError(f"{where} must be a string or a list of strings, got {value!r}")
    return [str(v) for v in value]


def _context_from(value, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigError(f"{where}.context_from must map conditioner / staircase to a stage name or a path, got {value!r}")
    bad = sorted(set(value) - set(CONTEXT_FROM_KEYS))
    if bad:
        raise ConfigError(f"{where}.context_from: unknown key {bad[0]!r} (valid: {', '.join(CONTEXT_FROM_KEYS)})")
    return {str(k): str(v) for k, v in value.items()}


def read_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe file.

    Raises:
        ConfigError: naming the file and the key: unknown keys, a stage without name or config,
            duplicate stage names, ``init_from`` naming a later stage or itself.
    """
    path = Path(path)
    raw = read_yaml(path)
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(raw)
    unknown = set(tree) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown recipe key {sorted(unknown)[0]!r} (valid: {', '.join(sorted(RECIPE_KEYS))})")
    name = str(tree.get("name") or path.stem)
    stages_raw = tree.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of stages")
    stages: list[Stage] = []
    for i, item in enumerate(stages_raw):
        where = f"{path}: stages[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a mapping (name, config, overrides, ...)")
        bad = set(item) - STAGE_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown stage key {sorted(bad)[0]!r} (valid: {', '.join(sorted(STAGE_KEYS))})")
        if not item.get("name") or not item.get("config"):
            raise ConfigError(f"{where} needs a name and a config")
        stage = Stage(
            name=str(item["name"]), config=_strings(item["config"], f"{where}.config"),
            overrides=_strings(item.get("overrides") or [], f"{where}.overrides"),
            init_from=str(item.get("init_from") or ""), slurm=_strings(item.get("slurm") or [], f"{where}.slurm"),
            note=str(item.get("note") or ""), context_from=_context_from(item.get("context_from"), where),
        )
        if any(s.name == stage.name for s in stages):
            raise ConfigError(f"{where}: stage name {stage.name!r} is used twice")
        later = {str(s.get("name")) for s in stages_raw[i:] if isinstance(s, dict)}
        if stage.init_from in later:
            raise ConfigError(f"{where}: init_from={stage.init_from!r} names this or a later stage; a stage starts "
                              "from an earlier one")
        for key, source in stage.context_from.items():
            if source in later:
                raise ConfigError(f"{where}: context_from.{key}={source!r} names this or a later stage; a stage reads "
                                  "an earlier one's weights")
        for o in stage.overrides:
            if o.split("=", 1)[0] in ("train.run_name", "train.runs_root", "train.resume"):
                raise ConfigError(f"{where}: {o.split('=', 1)[0]} is set by the recipe runner (runs_root, name)")
        stages.append(stage)
    return Recipe(name=name, runs_root=str(tree.get("runs_root") or "runs"), stages=stages, path=path)
