"""Write and load checkpoints in a run folder (finding, listing and pruning them is :mod:`.folders`').

Layout (one folder per optimizer step)::

    run_dir/checkpoints/step_00000200/
        model.safetensors        model state_dict (name -> tensor; ``_extra_state`` entries and
                                 the key order travel as JSON in the header)
        optimizer.safetensors    tensors of the optimizer state_dict
        optimizer.json           its structure, tensors replaced by references
        trainer.safetensors      trainer tensors (RNG states, counters kept as tensors)
        trainer.json             trainer structure (step, data-loader state, RNG tuples ...)
        config.yaml              the resolved run config
        manifest.json            format version, step, time, sha256 + size of every file

A save writes everything into ``checkpoints/.tmp-step_00000200-<random>``, fsyncs each file and
the folder, renames it to its final name and fsyncs ``checkpoints/``. A crash at any point
leaves either the previous state or the complete new folder; leftover ``.tmp-*`` folders are
never loaded and are removed by the next successful save. Saving a step that already exists
first renames the old folder to ``.old-*``: a crash between the two renames leaves that one
step missing (older checkpoints stay loadable), never a mix of old and new files.

This is the *gathered* layout (format_version 1): one writer holds the whole state. The
*sharded* layout (format_version 2, :mod:`.sharded`) keeps the folder, the scratch-and-rename
commit and the manifest, and replaces the model and optimizer files by one file of pieces per
rank plus ``index.json``: :func:`begin_sharded_save` / :func:`finish_sharded_save`, what
training writes; the gathered layout is written by :mod:`.merge` from a sharded checkpoint.
Both load with :func:`load_checkpoint`; a run folder must have a single save in flight. Every
tensor is stored with safetensors; no pickle is used.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .manifest import (
    CheckpointError,
    fsync_path,
    sync_and_digest,
    verify_hashes,
    write_manifest,
    write_text_durable,
)
from .folders import CHECKPOINTS, CONFIG_FILE, MODEL_FILE, REQUIRED_FILES, STEP_DIR, check_folder, prune_checkpoints, step_dirname
from .stable import save_file_stable
from .sharded import REQUIRED_FILES as SHARDED_FILES
from .sharded import ShardedReader, commit_files, write_sharded
from .state import StateError, dedupe_storage, flatten_state, standalone_tensor, unflatten_state


@dataclass
class Checkpoint:
    """A loaded checkpoint; tensors are on the CPU."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: Any
    trainer: Any
    config_yaml: str
    path: Path


def _write_tensors(
    path: Path,
    tensors: dict[str, torch.Tensor],
    order: list[str] | None = None,
    extra_json: str | None = None,
) -> None:
    """One safetensors file; ``extra_json`` (encoded non-tensor entries) goes into the header.

    safetensors sorts names, so the original order (of tensors and extras together) is kept
    in the header too, and a loaded state_dict iterates exactly like the saved one.
    """
    metadata = {"format": "pt", "order": json.dumps(order if order is not None else list(tensors))}
    if extra_json is not None:
        metadata["extra"] = extra_json
    save_file_stable(tensors, path, metadata)


def _write_state(folder: Path, stem: str, state: Any) -> None:
    """``stem.json`` (structure) + ``stem.safetensors`` (tensors) for a nested state."""
    try:
        structure, tensors = flatten_state(state)
        text = json.dumps(structure, allow_nan=False, indent=1)
    except (StateError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot save {stem} state: {exc}") from exc
    _write_tensors(folder / f"{stem}.safetensors", tensors)
    write_text_durable(folder / f"{stem}.json", text + "\n")


def _write_model(path: Path, model: dict[str, Any]) -> None:
    """Model tensors, plus the few non-tensor entries some modules put in a state_dict.

    megatron-core layers report ``*._extra_state`` (None, or bytes for Transformer Engine);
    those small values travel as JSON in the safetensors header instead of a side file.
    """
    tensors = {}
    for name, value in model.items():
        if type(name) is not str:
            raise CheckpointError(f"model state keys must be str, got {name!r}")
        if isinstance(value, torch.Tensor):
            tensors[name] = standalone_tensor(value)
    try:
        extra, nested = flatten_state({k: v for k, v in model.items() if k not in tensors})
        extra_json = json.dumps(extra, allow_nan=False)
    except (StateError, ValueError) as exc:
        raise CheckpointError(f"cannot save model state: {exc}") from exc
    if nested:
        raise CheckpointError(
            f"model state entries {sorted(nested)[:3]} hold tensors inside containers; "
            "a model state_dict must be flat"
        )
    _write_tensors(path, dedupe_storage(tensors), list(model), extra_json)


def _new_scratch(root: Path, prefix: str) -> Path:
    # os.mkdir (not tempfile.mkdtemp) so that the final folder gets the usual umask-derived
    # permissions instead of 0700, which would hide checkpoints from teammates on a cluster.
    while True:
        path = root / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _commit(tmp: Path, final: Path) -> None:
    """Rename a finished temp folder to its final name, replacing an older one safely."""
    root = final.parent
    old = None
    if final.exists():
        # rename() cannot replace a non-empty folder; move the old one out of the way under a
        # name that is never loaded, so that there is no moment with a half-deleted step folder.
        old = root / f".old-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: Any,
    trainer: Any,
    config_yaml: str,
    keep_last: int,
    keep_every: int = 0,
) -> Path:
    """Write a complete checkpoint atomically, then prune old ones.

    Args:
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints/step_XXXXXXXX``.
        step: the optimizer step reached (>= 0).
        model: flat ``name -> tensor`` state_dict; views, non-contiguous and tied tensors are
            copied to standalone CPU tensors.
        optimizer: nested optimizer state (e.g. ``optimizer.state_dict()``).
        trainer: nested trainer state (JSON-able values, tuples, tensors such as
            ``torch.get_rng_state()``, numpy arrays such as ``np.random.get_state()``).
        config_yaml: the resolved config as YAML text.
        keep_last: complete checkpoints to keep after this save (the newest by step, plus
            always the one just written); <= 0 keeps all.
        keep_every: milestones: checkpoints whose step is a multiple of this are never
            pruned (0 = none).

    Returns:
        The final checkpoint folder.

    Raises:
        CheckpointError: a value that cannot be stored, or a call on a torch.distributed rank
            other than 0; nothing is committed in that case.
        OSError: a failed write; the temporary folder is removed and the previous
            checkpoints are untouched.
    """
    if type(step) is not int or step < 0:
        raise CheckpointError(f"checkpoint step must be an int >= 0, got {step!r}")
    rank = _dist_rank()
    if rank != 0:
        # Several writers in one run folder would race on the rename and on the clean-up of
        # each other's temp folders; per-rank shard files are a later format extension.
        raise CheckpointError(f"save_checkpoint called on rank {rank}; only rank 0 saves checkpoints")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dirname(step)
    tmp = _new_scratch(root, f".tmp-{final.name}-")
    try:
        _write_model(tmp / MODEL_FILE, model)
        _write_state(tmp, "optimizer", optimizer)
        _write_state(tmp, "trainer", trainer)
        write_text_durable(tmp / CONFIG_FILE, config_yaml)
        files = {name: sync_and_digest(tmp / name) for name in REQUIRED_FILES}
        write_manifest(tmp, step, files)
        fsync_path(tmp)
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last, protect=final, keep_every=keep_every)
    return final


def begin_sharded_save(run_dir: str | Path, step: int, rank: int, world: int, group=None) -> tuple[Path, Path]:
    """Rank 0 creates the scratch folder of a sharded save; every rank learns its name (a
    collective over ``group`` when ``world > 1``).

    Returns:
        ``(scratch folder, final folder)``.
    """
    if type(step) is not int or step < 0:
        raise CheckpointError(f"checkpoint step must be an int >= 0, got {step!r}")
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dirname(step)
    name: list = [None]
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        name = [str(_new_scratch(root, f".tmp-{final.name}-"))]
    if world > 1:
        torch.distributed.broadcast_object_list(name, src=torch.distributed.get_global_rank(group, 0), group=group)
    return Path(name[0]), final


def finish_sharded_save(
    tmp: Path,
    final: Path,
    *,
    rank: int,
    world: int,
    group=None,
    pieces: list,
    stage: dict | None,
    trainer: Any = None,
    config_yaml: str = "",
    keep_last: int = 0,
    keep_every: int = 0,
) -> Path:
    """Write this rank's pieces; rank 0 commits the checkpoint once every rank's file is
    durable, then prunes (a collective over ``group``; see :mod:`.sharded`).

    Args:
        tmp, final: from :func:`begin_sharded_save`.
        pieces: this rank's pieces (standalone CPU tensors, see :func:`.sharded.copy_off`).
        stage: this pipeline rank's description, or None (see ``checkpoint.rank_pieces.rank_pieces``).
        trainer, config_yaml: rank 0's trainer state and config (ignored elsewhere).
        keep_last, keep_every: retention, as :func:`save_checkpoint`.

    Returns:
        The final checkpoint folder, on every rank.

    Raises:
        CheckpointError: on every rank, naming what failed; nothing is committed then.
    """

    def commit(reports: list[dict]) -> Path:
        def rest(folder: Path) -> None:
            _write_state(folder, "trainer", trainer)
            write_text_durable(folder / CONFIG_FILE, config_yaml)

        commit_files(tmp, int(STEP_DIR.match(final.name).group(1)), reports, rest)
        _commit(tmp, final)
        prune_checkpoints(final.parent.parent, keep_last, protect=final, keep_every=keep_every)
        return final

    return write_sharded(tmp, rank, world, group, pieces, stage, commit)


def _load_tensors(file: Path) -> dict[str, Any]:
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
        order = json.loads(metadata.get("order", "[]"))
        extra = unflatten_state(json.loads(metadata.get("extra", "{}")), {})
        tensors = load_file(str(file))
    except (SafetensorError, StateError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: cannot read tensors ({exc})") from None
    entries = {**tensors, **extra}
    if sorted(order) != sorted(entries):
        raise CheckpointError(f"{file}: header order list does not match the stored entries")
    return {name: entries[name] for name in order}


def _load_state(folder: Path, stem: str) -> Any:
    json_file = folder / f"{stem}.json"
    try:
        structure = json.loads(json_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{json_file}: malformed JSON ({exc})") from None
    tensors = _load_tensors(folder / f"{stem}.safetensors")
    try:
        return unflatten_state(structure, tensors)
    except (StateError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{json_file}: cannot rebuild the {stem} state ({exc})") from None


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder.

    Args:
        path: a ``step_XXXXXXXX`` folder (see :func:`.folders.find_latest`, :func:`.folders.resolve_resume`).
        verify: compare every file's sha256 with the manifest before reading it.

    Returns:
        A :class:`Checkpoint` with CPU tensors and the nested states rebuilt exactly.

    Raises:
        CheckpointError: naming the folder or file that is incomplete, corrupted or unreadable.
    """
    folder = Path(path)
    manifest = check_folder(folder)
    if manifest.get("layout") == "sharded":
        reader = sharded_reader(folder, verify, manifest)
        return Checkpoint(
            step=manifest["step"],
            model=reader.model_state(),
            optimizer=reader.optimizer_state(),
            trainer=_load_state(folder, "trainer"),
            config_yaml=(folder / CONFIG_FILE).read_text(encoding="utf-8"),
            path=folder,
        )
    if verify:
        verify_hashes(folder, manifest)
    return Checkpoint(
        step=manifest["step"],
        model=_load_tensors(folder / MODEL_FILE),
        optimizer=_load_state(folder, "optimizer"),
        trainer=_load_state(folder, "trainer"),
        config_yaml=(folder / CONFIG_FILE).read_text(encoding="utf-8"),
        path=folder,
    )


def sharded_reader(path: str | Path, verify: bool = True, manifest: dict | None = None) -> ShardedReader:
    """A reader of a sharded checkpoint's pieces; the trainer state and config are read with
    :func:`load_trainer_state`. With ``verify``, the trainer files' hashes are checked now and
    each piece file's when it is first read.

    Raises:
        CheckpointError: not a complete sharded checkpoint, naming the folder or file.
    """
    folder = Path(path)
    manifest = manifest or check_folder(folder)
    if manifest.get("layout") != "sharded":
        raise CheckpointError(f"{folder}: not a sharded checkpoint (layout {manifest.get('layout', 'gathered')!r})")
    if verify:
        verify_hashes(folder, dict(manifest, files={n: manifest["files"][n] for n in SHARDED_FILES}))
    return ShardedReader(folder, manifest, verify)


def load_model_state(path: str | Path, verify: bool = True) -> tuple[int, dict[str, Any], str]:
    """``(step, model state, config YAML)`` of a checkpoint folder of either layout, without its
    optimizer state (a sharded checkpoint's optimizer pieces are not read at all).

    Raises:
        CheckpointError: naming the folder or file that is incomplete, corrupted or unreadable.
    """
    folder = Path(path)
    manifest = check_folder(folder)
    if manifest.get("layout") != "sharded":
        state = load_checkpoint(folder, verify)
        return state.step, state.model, state.config_yaml
    model = sharded_reader(folder, verify, manifest).model_state()
    return manifest["step"], model, (folder / CONFIG_FILE).read_text(encoding="utf-8")


def load_trainer_state(path: str | Path) -> tuple[Any, str]:
    """``(trainer state, config YAML)`` of a checkpoint folder of either layout."""
    folder = Path(path)
    return _load_state(folder, "trainer"), (folder / CONFIG_FILE).read_text(encoding="utf-8")
