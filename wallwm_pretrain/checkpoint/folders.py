"""The checkpoints of a run folder: their names, which are complete, the newest, retention, and
what ``train.resume`` names.

A step folder ``checkpoints/step_XXXXXXXX`` counts once its manifest lists every file its layout
requires (gathered: :data:`REQUIRED_FILES`; sharded: ``sharded.REQUIRED_FILES``) at full size,
under the step its name says; scratch folders (``.tmp-*`` of a save in flight or crashed,
``.old-*`` of a replacement or deletion cut short) never count and are removed by the next
prune. Writing and loading are :mod:`.store`'s.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from .manifest import CheckpointError, fsync_path, read_manifest
from .sharded import REQUIRED_FILES as SHARDED_FILES

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
REQUIRED_FILES = (
    MODEL_FILE,
    "optimizer.safetensors",
    "optimizer.json",
    "trainer.safetensors",
    "trainer.json",
    CONFIG_FILE,
)
STEP_DIR = re.compile(r"^step_(\d{8,})$")
SCRATCH_PREFIXES = (".tmp-", ".old-")


def step_dirname(step: int) -> str:
    """``step_00000200``: zero-padded so that names sort like steps (wider past 10^8)."""
    return f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint, oldest first (sizes checked, not hashes)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir() and is_complete(entry):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a manifest whose listed files are all present, at full size."""
    try:
        check_folder(Path(path))
    except CheckpointError:
        return False
    return True


def check_folder(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder")
    manifest = read_manifest(path)
    required = SHARDED_FILES if manifest.get("layout") == "sharded" else REQUIRED_FILES
    for name in required:
        if name not in manifest["files"]:
            raise CheckpointError(f"{path}/manifest.json: manifest does not list required file {name!r}")
    match = STEP_DIR.match(path.name)
    if match and int(match.group(1)) != manifest["step"]:
        raise CheckpointError(f"{path}: folder name does not match manifest step {manifest['step']}")
    return manifest


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None.

    Args:
        run_dir: the run folder.

    Returns:
        The folder with the highest step whose manifest lists all files at the right sizes;
        temp folders and folders without a manifest are ignored.
    """
    complete = list_checkpoints(run_dir)
    return complete[-1][1] if complete else None


def prune_checkpoints(
    run_dir: str | Path, keep_last: int, protect: Path | None = None, keep_every: int = 0
) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last``, and stale scratch folders.

    Args:
        run_dir: the run folder.
        keep_last: how many complete checkpoints to keep; <= 0 keeps all.
        protect: a folder that is never deleted (the one just written), even when newer
            checkpoints from an earlier attempt exist.
        keep_every: checkpoints whose step is a multiple of this are milestones, kept forever
            and not counted in ``keep_last`` (0 = no milestones).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    # Leftovers of crashed saves or interrupted deletions: safe to drop under the single-writer
    # rule, and they can be as large as a full checkpoint.
    for entry in root.iterdir():
        if entry.name.startswith(SCRATCH_PREFIXES) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    if keep_last <= 0:
        return
    is_milestone = lambda step: keep_every > 0 and step % keep_every == 0  # noqa: E731
    complete = [(step, folder) for step, folder in list_checkpoints(run_dir) if not is_milestone(step)]
    protect = Path(protect).resolve() if protect is not None else None
    for _, folder in complete[:-keep_last]:
        if protect is not None and folder.resolve() == protect:
            continue
        # Rename first so that a deletion cut short never leaves a step folder that still looks
        # loadable by name.
        doomed = root / f".old-{folder.name}-{secrets.token_hex(4)}"
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    fsync_path(root)


def is_sharded(path: str | Path) -> bool:
    """Whether a complete checkpoint folder has the sharded layout (per-rank piece files)."""
    return check_folder(Path(path)).get("layout") == "sharded"


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """Turn ``train.resume`` into a checkpoint folder to load, or None to start fresh.

    Args:
        run_dir: the run folder.
        resume: ``"none"`` (start fresh), ``"auto"`` (newest complete checkpoint of the run,
            None when there is none) or a path to a checkpoint folder.

    Returns:
        The checkpoint folder, or None.

    Raises:
        CheckpointError: an explicit path that is not a complete checkpoint, naming it and
            saying why.
    """
    if resume == "none":
        return None
    if resume == "auto":
        return find_latest(run_dir)
    if not resume:
        raise CheckpointError("train.resume is empty; use 'auto', 'none' or a checkpoint folder")
    folder = Path(resume).expanduser()
    try:
        check_folder(folder)
    except CheckpointError as exc:
        raise CheckpointError(
            f"train.resume={resume!r} is not a complete checkpoint folder: {exc}"
        ) from None
    return folder
