"""A model-weights folder: the start of a run, not its resumption (``model.init_from``).

:func:`load_init_weights` reads what ``model.init_from`` may name: such a folder, a previous
stage's checkpoint (a step folder, or a run folder: its newest complete checkpoint) or an
exported ``.safetensors`` file; from a checkpoint only the model tensors are read (no optimizer,
loader, schedule or RNG state).

Layout (written by ``python -m wallwm_pretrain.convert wan``)::

    DIR/model.safetensors   the whole model's canonical (TP=1, PP=1) state: name -> tensor
    DIR/config.yaml         the run config the weights were built for (its ``model`` section)
    DIR/report.json         what was mapped from the source, what is new, what was unused

No optimizer state and no step: a run that starts from it starts at step 0. The tensors load
at any TP x PP layout through the canonical checkpoint path (``checkpoint/canonical.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .manifest import MANIFEST, CheckpointError, write_text_durable
from .stable import save_file_stable
from .state import dedupe_storage, standalone_tensor
from .folders import find_latest
from .store import load_model_state

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


EXPORT_FORMAT = "wallwm-model/1"


def load_init_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The model tensors ``model.init_from`` names, and a description of where they came from.

    Args:
        source: a weights folder (``convert wan``), a checkpoint step folder, a run folder (its
            newest complete checkpoint) or an exported ``.safetensors`` file.

    Returns:
        (name -> CPU tensor, e.g. ``"checkpoint runs/s1/checkpoints/step_00000060 (step 60)"``).

    Raises:
        CheckpointError: nothing of the kind there, an incomplete checkpoint, or an unreadable
            file, naming the path.
    """
    tensors, _, description = read_model_source(source)
    return tensors, description


def read_model_source(source: str | Path, flag: str = "model.init_from") -> tuple[dict[str, torch.Tensor], str, str]:
    """``(name -> CPU tensor, run config YAML, description)`` of what :func:`load_init_weights`
    accepts; ``flag`` names the option that gave ``source`` in errors."""
    path = Path(source)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{flag}={path}: cannot read tensors ({exc})") from None
        step = f" (step {meta['step']})" if meta.get("format") == EXPORT_FORMAT and "step" in meta else ""
        return tensors, meta.get("config", ""), f"exported model {path}{step}"
    if not path.is_dir():
        raise CheckpointError(f"{flag}={path}: no such file or folder (give a weights folder, a checkpoint "
                              "step folder, a run folder or an exported .safetensors file)")
    if (path / WEIGHTS_FILE).is_file():
        config = path / CONFIG_FILE
        return load_weights(path), config.read_text() if config.is_file() else "", f"weights folder {path}"
    folder = path
    if not (path / MANIFEST).is_file():  # a run folder: its newest complete checkpoint
        folder = find_latest(path)
        if folder is None:
            raise CheckpointError(f"{flag}={path}: neither a weights folder ({WEIGHTS_FILE}), a checkpoint "
                                  f"({MANIFEST}) nor a run folder with a complete checkpoint")
    step, model, config_yaml = load_model_state(folder)
    tensors = {n: v for n, v in model.items() if isinstance(v, torch.Tensor)}
    return tensors, config_yaml, f"checkpoint {folder} (step {step})"
