"""A model-weights folder: the start of a run, not its resumption (``model.init_from``).

Layout (written by ``python -m wallwm_pretrain.convert wan``)::

    DIR/model.safetensors   the whole model's canonical (TP=1, PP=1) state: name -> tensor
    DIR/config.yaml         the run config the weights were built for (its ``model`` section)
    DIR/report.json         what was mapped from the source, what is new, what was unused

No optimizer state and no step: a run that starts from it starts at step 0. The tensors load
at any TP x PP layout through the canonical checkpoint path (``parallel/canonical.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .manifest import CheckpointError, write_text_durable
from .stable import save_file_stable
from .state import dedupe_storage, standalone_tensor

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"


def save_weights(folder: str | Path, model: dict[str, torch.Tensor], config_yaml: str, report: dict) -> Path:
    """Write a weights folder (tensor entries only; megatron's ``_extra_state`` entries are
    rebuilt by the model that loads them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: standalone_tensor(v) for n, v in model.items() if isinstance(v, torch.Tensor)}
    save_file_stable(dedupe_storage(tensors), folder / WEIGHTS_FILE, {"order": json.dumps(list(tensors))})
    write_text_durable(folder / CONFIG_FILE, config_yaml)
    write_text_durable(folder / REPORT_FILE, json.dumps(report, indent=1) + "\n")
    return folder


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights folder (CPU).

    Raises:
        CheckpointError: no such folder or file, or an unreadable file (named).
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"model.init_from: no weights file {path} (write one with python -m wallwm_pretrain.convert wan)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
