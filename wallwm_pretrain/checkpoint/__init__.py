"""Checkpoints: atomic, verifiable, pickle-free (safetensors + JSON).

``save_checkpoint`` writes ``run_dir/checkpoints/step_XXXXXXXX/`` atomically and prunes old
ones; ``find_latest`` / ``resolve_resume`` pick what to resume from; ``load_checkpoint``
verifies hashes and rebuilds the nested optimizer and trainer states exactly. See
:mod:`.store` for the layout and :mod:`.state` for the nested-state encoding.
"""

from .manifest import CheckpointError
from .state import StateError, flatten_state, unflatten_state
from .store import (
    Checkpoint,
    find_latest,
    is_complete,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    step_dirname,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "StateError",
    "find_latest",
    "flatten_state",
    "is_complete",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "step_dirname",
    "unflatten_state",
]
