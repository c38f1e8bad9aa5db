"""The gathered layout of a sharded checkpoint: every piece read, the whole state written by one
process (``python -m wallwm_pretrain.checkpoint merge``).

Training writes sharded checkpoints only (every rank its pieces). Tools that want the whole
state in one file per kind (``model.safetensors``, ``optimizer.safetensors`` ...) get it here,
offline and in one process, and the trainer runs the same merge after each save when a config
still asks for ``train.save_format=gathered``. The result loads like any checkpoint, and
gathered checkpoints of earlier runs keep loading too.

Trade-off: the merge holds the whole model and optimizer state in memory.
"""

from __future__ import annotations

from pathlib import Path

from .folders import find_latest, is_sharded
from .manifest import MANIFEST, CheckpointError
from .store import load_checkpoint, save_checkpoint


def checkpoint_folder(run_or_step: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one of a run folder.

    Raises:
        CheckpointError: a run folder without a complete checkpoint, or a path that is neither.
    """
    path = Path(run_or_step).expanduser()
    if (path / MANIFEST).is_file():
        return path
    latest = find_latest(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint folder nor a run folder with a complete checkpoint")
    return latest


def merge_checkpoint(
    run_or_step: str | Path, out_run_dir: str | Path, keep_last: int = 0, keep_every: int = 0, verify: bool = True
) -> Path:
    """Write the gathered layout of a sharded checkpoint into ``out_run_dir/checkpoints/``.

    Args:
        run_or_step: a sharded checkpoint folder, or a run folder (its newest checkpoint).
        out_run_dir: the run folder to write into; the source's own run folder replaces the
            sharded step by the gathered one (atomically, as any save does).
        keep_last, keep_every: retention in ``out_run_dir`` after the write (see
            :func:`~.store.save_checkpoint`; 0 keeps all).
        verify: check every piece file's sha256 against the manifest while reading.

    Returns:
        The gathered checkpoint folder.

    Raises:
        CheckpointError: the source is not a complete sharded checkpoint (named).
    """
    folder = checkpoint_folder(run_or_step)
    if not is_sharded(folder):
        raise CheckpointError(f"{folder}: already a gathered checkpoint")
    state = load_checkpoint(folder, verify)
    return save_checkpoint(
        out_run_dir, state.step, model=state.model, optimizer=state.optimizer, trainer=state.trainer,
        config_yaml=state.config_yaml, keep_last=keep_last, keep_every=keep_every,
    )
