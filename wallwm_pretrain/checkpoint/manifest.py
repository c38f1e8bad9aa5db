"""Checkpoint manifest and durable-write helpers.

Every checkpoint folder holds a ``manifest.json`` listing each other file with its size and
sha256. The manifest is what makes a folder a checkpoint: a folder without one, or whose files
do not match the listed sizes, is incomplete and is never loaded. Sizes are checked on every
scan (cheap, catches truncation); hashes only when a checkpoint is loaded (reads every byte).

Trade-off: the manifest does not checksum itself; a flipped byte in it either breaks the JSON
or changes an expected size/hash, and both are reported as errors, never silently accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "wallwm-pretrain-checkpoint"
FORMAT_VERSION = 2
"""1: gathered (one writer); 2 adds ``layout``: ``gathered`` or ``sharded`` (per-rank files)."""
LAYOUTS = ("gathered", "sharded")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or cannot be written."""


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to stable storage.

    Folders must be fsynced too: a rename or a new entry is only durable once the folder that
    holds it is.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_durable(path: Path, text: str) -> None:
    """Write a UTF-8 text file and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def sync_and_digest(path: Path) -> dict[str, Any]:
    """fsync a written file and return its manifest entry ``{"sha256", "size"}``."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"sha256": digest, "size": path.stat().st_size}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, step: int, files: dict[str, dict[str, Any]], layout: str = "gathered") -> None:
    """Write and fsync ``manifest.json`` for the files already in ``folder``.

    Args:
        folder: the (temporary) checkpoint folder.
        step: the optimizer step the checkpoint belongs to.
        files: file name -> ``{"sha256": ..., "size": ...}`` (from :func:`sync_and_digest`).
        layout: ``gathered`` (written as format_version 1, readable by older code) or
            ``sharded`` (format_version 2).
    """
    manifest = {
        "format": FORMAT,
        "format_version": 1 if layout == "gathered" else FORMAT_VERSION,
        **({} if layout == "gathered" else {"layout": layout}),
        "step": step,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    write_text_durable(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_manifest(folder: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read ``folder/manifest.json`` and check that the folder is complete (sizes only).

    Args:
        folder: a checkpoint folder.
        required: file names that must be listed in the manifest.

    Returns:
        The manifest dict.

    Raises:
        CheckpointError: naming the folder or file, when the manifest is missing or malformed,
            was written by a newer format, or a listed file is missing or has the wrong size.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (not a checkpoint, or an unfinished save)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        step = manifest["step"]
        version = manifest["format_version"]
        if manifest.get("format") != FORMAT or type(step) is not int or not isinstance(files, dict):
            raise ValueError("unexpected format, step or files")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed manifest ({exc})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this code supports ({FORMAT_VERSION})"
        )
    if manifest.get("layout", "gathered") not in LAYOUTS:
        raise CheckpointError(f"{path}: unknown layout {manifest.get('layout')!r}")
    for name in required:
        if name not in files:
            raise CheckpointError(f"{path}: manifest does not list required file {name!r}")
    for name, entry in files.items():
        file = Path(folder) / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the manifest but missing")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(
                f"{file}: size {size} bytes, manifest says {entry.get('size')} (truncated or replaced)"
            )
    return manifest


def verify_hashes(folder: Path, manifest: dict[str, Any]) -> None:
    """Compare every listed file's sha256 with the manifest.

    Raises:
        CheckpointError: naming the first file whose content does not match.
    """
    for name, entry in manifest["files"].items():
        file = Path(folder) / name
        actual = file_sha256(file)
        if actual != entry.get("sha256"):
            raise CheckpointError(
                f"{file}: sha256 mismatch (manifest {entry.get('sha256')}, file {actual}); "
                "the file is corrupted"
            )
