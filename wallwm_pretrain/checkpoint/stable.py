"""safetensors files whose bytes depend only on their contents.

safetensors writes the header's ``__metadata__`` map in hash order, which differs from one save
to the next, so two saves of the same state differ in bytes and the manifest's sha256 cannot
show that two checkpoints are equal. After safetensors writes a file, its header is rewritten
in one order: metadata first with sorted keys, then the tensors by their data offsets. Tensor
bytes are not touched. The header keeps its length (safetensors pads it with spaces to a
multiple of 8) unless re-encoding changes it, in which case the file is copied once. Trade-off:
one extra read and write of the header per file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

_ALIGN = 8


def canonical_header(header: dict) -> bytes:
    ordered: dict = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__"]
    ordered.update(sorted(tensors, key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def save_file_stable(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with byte-identical output for identical input."""
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    with path.open("r+b") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        text = canonical_header(json.loads(fh.read(length)))
        if len(text) <= length:
            fh.seek(8)
            fh.write(text.ljust(length, b" "))
            return
        padded = text.ljust(-(-len(text) // _ALIGN) * _ALIGN, b" ")
        tmp = path.with_name(path.name + ".hdr")
        with tmp.open("wb") as out:
            out.write(struct.pack("<Q", len(padded)) + padded)
            fh.seek(8 + length)
            shutil.copyfileobj(fh, out)
    os.replace(tmp, path)
