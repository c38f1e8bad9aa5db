"""Sharded checkpoints: every rank writes its own pieces; rank 0 commits the index last.

Layout of a sharded step folder::

    step_00000200/
        rank00000.safetensors ...  one file per rank: pieces (boxes) of canonical tensors, each
                                   stored under ``<name>@<offsets>``; a rank that holds nothing
                                   unique writes an empty file
        index.json                 every canonical tensor: global shape, dtype and its pieces
                                   (file, key, offsets, sizes); the model's parameter order, its
                                   non-tensor entries, the optimizer's by-name structure
        trainer.safetensors/.json  trainer state (rank 0, as in the gathered layout)
        config.yaml
        manifest.json              format_version 2, layout "sharded", sha256 + size of every file

A save (:func:`write_sharded`): each rank writes and fsyncs its file in the scratch folder rank 0
created, then sends rank 0 the file's digest and piece table (a gather: the barrier that says
every piece is durable). Only then does rank 0 write the index, the trainer state and the
manifest, fsync, and rename the folder to its final name, exactly as the gathered save does;
it then tells every rank the outcome. A rank that dies before the gather leaves a scratch
folder without a manifest, which is never loaded.

Loading (:class:`ShardedReader`) opens only the files holding the boxes asked for and reads
them with ``safe_open(...).get_slice``: a rank of any layout reads its own share.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open

from wallwm_pretrain.checkpoint.optim.by_name import merge_by_name
from wallwm_pretrain.checkpoint.optim.whole import whole_state
from wallwm_pretrain.checkpoint.pieces import Piece, fill_box

from .manifest import (
    CheckpointError,
    file_sha256,
    fsync_path,
    sync_and_digest,
    write_manifest,
    write_text_durable,
)
from .stable import save_file_stable
from .state import StateError, dedupe_storage, flatten_state, standalone_tensor, unflatten_state

INDEX = "index.json"
INDEX_FORMAT = "wallwm-sharded-index/1"
REQUIRED_FILES = (INDEX, "trainer.safetensors", "trainer.json", "config.yaml")


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.safetensors"


def copy_off(pieces: list[Piece], background: bool) -> list[Piece]:
    """Pieces as standalone CPU tensors that training can no longer change.

    ``background``: every piece is copied (into pinned memory from a GPU, then one
    synchronisation; a clone on the CPU), since the write happens while training goes on.
    Otherwise CPU tensors that already own exactly their storage are written as they are.
    """
    if not background:
        return [p._replace(tensor=standalone_tensor(p.tensor)) for p in pieces]
    out, on_gpu = [], False
    for p in pieces:
        t = p.tensor.detach()
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            on_gpu = True
        else:
            host = t.clone(memory_format=torch.contiguous_format)
        out.append(p._replace(tensor=host))
    if on_gpu:
        torch.cuda.synchronize()
    return out


def _key(p: Piece) -> str:
    return f"{p.name}@{','.join(str(o) for o in p.offsets)}"


def write_rank_file(path: Path, rank: int, pieces: list[Piece]) -> list[list]:
    """Write one rank's pieces; returns its piece table ``[key, name, shape, offsets, sizes, dtype]``."""
    tensors, table = {}, []
    for p in pieces:
        key = _key(p)
        if key in tensors:
            raise CheckpointError(f"rank {rank} holds the piece {key} twice")
        tensors[key] = p.tensor
        table.append([key, p.name, list(p.global_shape), list(p.offsets), list(p.tensor.shape), str(p.tensor.dtype)])
    save_file_stable(dedupe_storage(tensors), path, {"format": "pt", "rank": str(rank)})
    return table


def _encode(value: Any, what: str) -> Any:
    try:
        structure, tensors = flatten_state(value)
    except StateError as exc:
        raise CheckpointError(f"cannot save {what}: {exc}") from exc
    if tensors:
        raise CheckpointError(f"{what} holds tensors {sorted(tensors)[:3]}; they belong in pieces")
    return structure


def build_index(reports: list[dict]) -> dict:
    """The index from every rank's report; checks that the pieces tile each tensor exactly once."""
    tensors: dict[str, dict] = {}
    for r in reports:
        for key, name, shape, offsets, sizes, dtype in r["table"]:
            entry = tensors.setdefault(name, {"shape": shape, "dtype": dtype, "pieces": []})
            if entry["shape"] != shape or entry["dtype"] != dtype:
                raise CheckpointError(f"{name}: ranks disagree on its shape or dtype ({entry['shape']} vs {shape})")
            if any(o < 0 or o + s > n for o, s, n in zip(offsets, sizes, shape)):
                raise CheckpointError(f"{name}: piece at {offsets} of size {sizes} lies outside {shape}")
            entry["pieces"].append([r["file"], key, offsets, sizes])
    for name, entry in tensors.items():
        held = sum(math.prod(p[3]) for p in entry["pieces"])
        if held != math.prod(entry["shape"]):
            raise CheckpointError(f"{name}: pieces hold {held} of {math.prod(entry['shape'])} elements (a layout bug)")
    stages = [r["stage"] for r in reports if r.get("stage")]
    order = [n for _, names in sorted(s for st in stages for s in st["stages"]) for n in names]
    extra = {k: v for st in stages for k, v in st["extra"].items()}
    structures = [st["optimizer"] for st in stages if st["optimizer"] is not None]
    optimizer = None
    if structures:
        merged = merge_by_name([dict(s, state={}) for s in structures], order)
        optimizer = {k: merged[k] for k in ("split", "hparams", "schedulers")}
    return {
        "format": INDEX_FORMAT,
        "files": [r["file"] for r in reports],
        "model_order": order,
        "model_extra": _encode(extra, "model state"),
        "optimizer": _encode(optimizer, "optimizer structure"),
        "tensors": dict(sorted(tensors.items())),
    }


def write_sharded(
    tmp: Path,
    rank: int,
    world: int,
    group: Optional[dist.ProcessGroup],
    pieces: list[Piece],
    stage: Optional[dict],
    commit,
) -> Path:
    """Write this rank's file into ``tmp``; rank 0 then commits the checkpoint (a collective
    over ``group``). ``commit(reports)`` runs on rank 0 only and returns the final folder.

    Raises:
        CheckpointError: on every rank, naming the rank that failed, when any rank's write
            or rank 0's commit failed; nothing is committed then.
    """
    try:
        path = tmp / rank_file(rank)
        table = write_rank_file(path, rank, pieces)
        report: dict = {"file": path.name, "entry": sync_and_digest(path), "table": table, "stage": stage}
    except Exception as exc:  # reported to rank 0 so that nobody waits for this rank's file
        report = {"error": f"rank {rank}: {type(exc).__name__}: {exc}"}
    reports = [report]
    if world > 1:
        reports = [None] * world if rank == 0 else None
        dist.gather_object(report, reports, dst=dist.get_global_rank(group, 0), group=group)
    outcome: list = [None]
    if rank == 0:
        try:
            errors = [r["error"] for r in reports if "error" in r]
            if errors:
                raise CheckpointError("sharded save failed: " + "; ".join(errors))
            outcome = [(True, str(commit(reports)))]
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            outcome = [(False, f"{type(exc).__name__}: {exc}")]
    if world > 1:
        dist.broadcast_object_list(outcome, src=dist.get_global_rank(group, 0), group=group)
    ok, what = outcome[0]
    if not ok:
        raise CheckpointError(what)
    return Path(what)


def commit_files(tmp: Path, step: int, reports: list[dict], write_rest) -> None:
    """Rank 0: index, the rest (``write_rest(tmp)``: trainer state, config) and the manifest."""
    index = build_index(reports)
    write_text_durable(tmp / INDEX, json.dumps(index, allow_nan=False) + "\n")
    write_rest(tmp)
    files = {r["file"]: r["entry"] for r in reports}
    files.update({name: sync_and_digest(tmp / name) for name in REQUIRED_FILES})
    write_manifest(tmp, step, files, layout="sharded")
    fsync_path(tmp)


class ShardedReader:
    """Boxes of canonical tensors from a sharded checkpoint folder (a ``PieceSource``).

    Files are opened on first use; with ``verify`` each file's sha256 is checked against the
    manifest when it is first opened, so a rank hashes only the files it reads from.
    """

    def __init__(self, folder: Path, manifest: dict, verify: bool = True) -> None:
        self.folder, self.manifest, self.verify = folder, manifest, verify
        path = folder / INDEX
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {index.get('format')!r}")
            self.tensors: dict[str, dict] = index["tensors"]
            self.model_order: list[str] = index["model_order"]
            self.model_extra: dict = unflatten_state(index["model_extra"], {})
            self.optimizer: Optional[dict] = unflatten_state(index["optimizer"], {})
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, StateError) as exc:
            raise CheckpointError(f"{path}: malformed index ({exc})") from None
        self._handles: dict[str, Any] = {}

    def shape(self, name: str) -> Optional[tuple[int, ...]]:
        entry = self.tensors.get(name)
        return tuple(entry["shape"]) if entry else None

    def keys(self, prefix: str) -> list[str]:
        return sorted(n[len(prefix):] for n in self.tensors if n.startswith(prefix))

    def _open(self, file: str):
        handle = self._handles.get(file)
        if handle is not None:
            return handle
        path = self.folder / file
        if not path.is_file():
            raise CheckpointError(f"{path}: piece file listed in the index is missing")
        if self.verify:
            expected = self.manifest["files"].get(file, {}).get("sha256")
            actual = file_sha256(path)
            if actual != expected:
                raise CheckpointError(f"{path}: sha256 mismatch (manifest {expected}, file {actual}); the file is corrupted")
        try:
            handle = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot read pieces ({exc})") from None
        self._handles[file] = handle
        return handle

    def read(self, name: str, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        entry = self.tensors.get(name)
        if entry is None:
            raise CheckpointError(f"{self.folder}: checkpoint holds no tensor {name!r}")
        dtype = getattr(torch, entry["dtype"].removeprefix("torch."))
        sizes = [int(s) for s in sizes]
        if not sizes:  # a 0-d tensor is one piece
            file, key, _, _ = entry["pieces"][0]
            return self._open(file).get_tensor(key)
        stored = [(poff, psize, lambda sl, file=file, key=key: self._open(file).get_slice(key)[sl])
                  for file, key, poff, psize in entry["pieces"]]
        try:
            return fill_box(offsets, sizes, dtype, stored)
        except ValueError as exc:
            raise CheckpointError(f"{self.folder}: {name}: {exc}") from None

    def read_whole(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        return self.read(name, [0] * len(shape), shape)

    def model_state(self) -> dict[str, Any]:
        """The whole model state in model order (every piece read: export, tools)."""
        return {n: self.model_extra[n] if n in self.model_extra else self.read_whole(n) for n in self.model_order}

    def optimizer_state(self) -> Optional[dict]:
        """The whole optimizer state in single-process layout, as a gathered checkpoint holds it."""
        return None if self.optimizer is None else whole_state(self.optimizer, self)
