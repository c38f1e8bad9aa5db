"""Checkpoints: atomic, verifiable, pickle-free (safetensors + JSON).

``save_checkpoint`` writes ``run_dir/checkpoints/step_XXXXXXXX/`` atomically and prunes old
ones; ``find_latest`` / ``resolve_resume`` pick what to resume from; ``load_checkpoint``
verifies hashes and rebuilds the nested optimizer and trainer states exactly;
``merge_checkpoint`` writes a sharded checkpoint in the gathered layout. See :mod:`.store` and
:mod:`.sharded` for the layouts, :mod:`.folders` for listing and retention, :mod:`.state` for the
nested-state encoding, :mod:`.optim` for the optimizer state's pieces.
"""

from .manifest import CheckpointError
from .state import StateError, flatten_state, unflatten_state
from .sharded import copy_off
from .folders import (
    find_latest,
    is_complete,
    is_sharded,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
    step_dirname,
)
from .store import (
    Checkpoint,
    begin_sharded_save,
    finish_sharded_save,
    load_model_state,
    load_trainer_state,
    sharded_reader,
    load_checkpoint,
    save_checkpoint,
)
from .merge import merge_checkpoint

__all__ = [
    "Checkpoint",
    "begin_sharded_save",
    "copy_off",
    "finish_sharded_save",
    "is_sharded",
    "load_model_state",
    "load_trainer_state",
    "sharded_reader",
    "CheckpointError",
    "StateError",
    "find_latest",
    "flatten_state",
    "is_complete",
    "list_checkpoints",
    "load_checkpoint",
    "merge_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "step_dirname",
    "unflatten_state",
]
