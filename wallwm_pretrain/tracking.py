"""Experiment tracking behind a small interface, with MLflow as the one real backend.

The trainer talks to a :class:`Tracker` (params, per-step metrics, text, artifacts, finish);
:func:`build_tracker` returns an :class:`MLflowTracker` on rank 0 and a :class:`NullTracker`
elsewhere or when tracking is disabled, so the training loop never branches on either.

By default (empty ``tracking.uri``) every run of a ``runs_root`` shares one sqlite store,
``<runs_root>/mlflow.db``, with artifacts under ``<runs_root>/mlartifacts``; no server is
needed. A resumed training run passes the MLflow run id it saved in its checkpoint and keeps
logging into the same MLflow run.

Trade-off: the MLflow client API (``MlflowClient``) is used instead of the fluent
``mlflow.start_run`` state, which costs an explicit run id on every call but lets several
trackers live in one process (tests, evaluation next to training) without interfering.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .config import Config

log = logging.getLogger(__name__)

# MLflow's server-side limits (mlflow.utils.validation in 3.17); a batch or value beyond them
# is rejected, so params are chunked and long values truncated rather than lost entirely.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000


class Tracker:
    """What the trainer may log. Subclasses implement every method; all take effect at once.

    Usable as a context manager: an exception ends the run as ``FAILED``, otherwise
    ``FINISHED``.
    """

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log run parameters; nested dicts are flattened to dotted keys, values stringified."""
        raise NotImplementedError

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics for one optimizer step."""
        raise NotImplementedError

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file (e.g. ``config.yaml``)."""
        raise NotImplementedError

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file into the run's artifacts (optionally under ``artifact_path``)."""
        raise NotImplementedError

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``FINISHED``, ``FAILED`` or ``KILLED``."""
        raise NotImplementedError

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")


class NullTracker(Tracker):
    """Logs nothing and touches no files (tracking disabled, or a rank other than 0)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with values as strings, cut to MLflow's limits.

    Args:
        params: possibly nested mapping (e.g. :func:`wallwm_pretrain.config.flatten` output).
        prefix: prepended to every key.

    Raises:
        ValueError: a key longer than MLflow accepts, naming it.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, dotted + "."))
            continue
        if len(dotted) > MAX_KEY_LENGTH:
            raise ValueError(f"param key longer than {MAX_KEY_LENGTH} characters: {dotted!r}")
        text = str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        out[dotted] = text
    return out


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MLflowTracker(Tracker):
    """Logs to one MLflow run through ``MlflowClient``.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/runs/mlflow.db`` or ``http://host:5000``.
        experiment: experiment name; created when missing.
        run_name: the MLflow run name (shown in the UI) of a new run.
        run_id: resume this existing run instead of creating one.
        artifact_location: artifact root used only when the experiment is created here
            (None = the tracking server's default).
        tags: tags set on a new run.

    Raises:
        ValueError: ``run_id`` does not exist in this tracking store.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        *,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.exceptions import MlflowException

        self.tracking_uri = tracking_uri
        self.client = open_store(tracking_uri)
        self._finished = False
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                raise ValueError(
                    f"cannot resume MLflow run {run_id!r} in {tracking_uri}: {exc.message}"
                ) from None
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self.resumed = True
            # A finished run shown as RUNNING again tells the UI that training continues.
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.experiment_id = self._experiment_id(experiment, artifact_location)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id
            self.resumed = False

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Another process sharing the store created it between the lookup and here.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches of at most 100.

        MLflow params are immutable. On a resumed run, params already logged with the same
        value are skipped, and a changed value (e.g. a larger ``train.steps``) is recorded as
        the tag ``param_changed.<key>`` instead of failing the run.
        """
        from mlflow.entities import Param, RunTag

        flat = flatten_params(params)
        existing = self.client.get_run(self.run_id).data.params if self.resumed else {}
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        changed = [
            RunTag(f"param_changed.{k}", v[:MAX_TAG_VALUE_LENGTH])
            for k, v in flat.items()
            if k in existing and existing[k] != v
        ]
        for key in (t.key for t in changed):
            log.warning("MLflow run %s: param %s changed on resume; logged as tag", self.run_id, key)
        for batch in _chunks(new, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)
        for batch in _chunks(changed, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for batch in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact to log does not exist: {path}")
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self.client.set_terminated(self.run_id, status=status)
        self._finished = True


def open_store(tracking_uri: str):
    """An ``MlflowClient`` of ``tracking_uri`` whose store exists and is migrated.

    A new sqlite store is created and migrated by the first client that touches it, and MLflow's
    migrations are not safe when two processes do that to the same file at once (a Slurm array
    or several launches sharing one runs root fail with ``duplicate column name`` or ``table
    already exists``). An exclusive lock on a file beside the database serialises the first
    touch of every process; later ones find the schema current and only read it.
    """
    import fcntl

    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f"{db.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # the client creates / migrates the store (at once or at its first call): both under the lock
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def default_store(runs_root: str | Path) -> tuple[str, str]:
    """``(tracking_uri, artifact_location)`` of the shared sqlite store of a runs root."""
    root = Path(runs_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


PARENT_RUN_ENV = "WALLWM_MLFLOW_PARENT_RUN"
"""Set by the recipe runner: the MLflow run id of the recipe, under which a stage's new run nests."""


def build_tracker(cfg: Config, rank: int, run_id: str | None = None) -> Tracker:
    """The tracker for this process.

    Args:
        cfg: the run config (``tracking.*`` and ``train.runs_root`` / ``train.run_name``).
        rank: global rank; only rank 0 logs.
        run_id: MLflow run id saved in the checkpoint being resumed, or None for a new run.

    Returns:
        A :class:`NullTracker` when tracking is disabled or ``rank != 0``, else an
        :class:`MLflowTracker` (sqlite store ``<runs_root>/mlflow.db`` when ``tracking.uri``
        is empty).
    """
    if not cfg.tracking.enabled or rank != 0:
        return NullTracker()
    if cfg.tracking.uri:
        uri, artifacts = cfg.tracking.uri, None
    else:
        uri, artifacts = default_store(cfg.train.runs_root)
    run_dir = Path(cfg.train.runs_root).expanduser().resolve() / cfg.train.run_name
    tags = {"wallwm.run_dir": str(run_dir)}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:  # a stage of a recipe: nested under the recipe's run (MLflow's own tag for that)
        tags["mlflow.parentRunId"] = parent
    return MLflowTracker(
        uri,
        cfg.tracking.experiment,
        cfg.train.run_name,
        run_id,
        artifact_location=artifacts,
        tags=tags,
    )


def plot_loss_curve(history: Mapping[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """Write a PNG with one line per series (e.g. ``{"loss": [(step, value), ...]}``).

    Uses a bare matplotlib ``Figure`` (Agg canvas), so no pyplot global state or GUI backend
    is touched. The y axis is logarithmic when every value is positive and they span more
    than a factor of 10, which keeps early spikes from flattening the rest of the curve.

    Args:
        history: series name -> ``(step, value)`` pairs; non-finite values are skipped.
        path: the PNG file to write (parent folders are created).

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = []
    for name, points in history.items():
        pts = [(int(s), float(v)) for s, v in points if math.isfinite(float(v))]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=name, linewidth=1.2)
            values.extend(v for _, v in pts)
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    if not values:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
