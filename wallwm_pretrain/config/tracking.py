"""The ``tracking`` section: where MLflow records runs (read by ``wallwm_pretrain.tracking``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str = ""
    """Tracking URI; empty = sqlite store ``<runs_root>/mlflow.db`` shared by all runs."""
    experiment: str = "wallwm-pretrain"
    enabled: bool = True
