"""One MLflow run per recipe; each stage's run nests under it (``mlflow.parentRunId``).

The recipe's run id is kept in ``<runs_root>/<recipe name>.recipe.json``, so running the recipe
again (to resume a stage) continues the same parent run. The stages' own runs log their trained
and frozen parameter counts per component as params (``params.trained.<component>``,
``params.frozen.<component>``, and the totals ``params.trained`` / ``params.frozen``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from wallwm_pretrain.config import Config
from wallwm_pretrain.recipe.spec import Recipe
from wallwm_pretrain.tracking import MLflowTracker, default_store


def record_path(recipe: Recipe) -> Path:
    return Path(recipe.runs_root) / f"{recipe.name}.recipe.json"


def recipe_tracker(recipe: Recipe, cfg: Config) -> Optional[MLflowTracker]:
    """The recipe's MLflow run (created, or resumed from the record), in the store and experiment
    of the first stage's config; None when that stage does not track."""
    if not cfg.tracking.enabled:
        return None
    uri, artifacts = (cfg.tracking.uri, None) if cfg.tracking.uri else default_store(recipe.runs_root)
    record = record_path(recipe)
    run_id = json.loads(record.read_text()).get("mlflow_run_id") if record.is_file() else None
    try:
        tracker = MLflowTracker(uri, cfg.tracking.experiment, recipe.name, run_id, artifact_location=artifacts,
                                tags={"wallwm.recipe": str(recipe.path)})
    except ValueError:  # the store no longer has that run: start a new one
        tracker = MLflowTracker(uri, cfg.tracking.experiment, recipe.name, None, artifact_location=artifacts,
                                tags={"wallwm.recipe": str(recipe.path)})
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"mlflow_run_id": tracker.run_id}) + "\n")
    tracker.log_params({"recipe": recipe.name, "recipe.file": str(recipe.path),
                        "recipe.stages": ",".join(s.name for s in recipe.stages)})
    return tracker
