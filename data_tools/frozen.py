"""Frozen model folders (diffusers Wan VAE, transformers UMT5 encoder + tokenizer), checked.

Only local folders are read (``local_files_only``): nothing is downloaded. Before a library
sees a folder, its ``config.json`` is checked for the model class the step needs (diffusers
writes ``_class_name``, transformers ``architectures``/``model_type``), so a missing folder, a
missing config or a folder of the wrong model (a UMT5 folder passed as ``--vae``) fails with a
message naming the file instead of a library traceback.

Each model folder has a *fingerprint* (sha256 over its config and samples of its weight files):
index.json records it, so a re-run with another model is noticed without hashing gigabytes of
weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import DataToolsError

VAE_CLASS = "AutoencoderKLWan"
TEXT_ENCODER_CLASS = "UMT5EncoderModel"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model")
SAMPLE = 1 << 20


def read_config(folder: Path, flag: str) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataToolsError(f"{folder}: {flag} folder not found (give a local model folder; "
                             "nothing is downloaded)")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataToolsError(f"{path} not found: {flag} must be a model folder saved with "
                             "save_pretrained") from None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"{path}: cannot read ({exc})") from None
    if not isinstance(config, dict):
        raise DataToolsError(f"{path}: must hold a JSON object")
    return config


def _describe_class(config: dict) -> str:
    return str(config.get("_class_name") or config.get("architectures") or config.get("model_type")
               or "no model class")


def fingerprint(*folders: Path) -> str:
    """sha256 over the config/tokenizer files of ``folders`` and, for each weight file, its name,
    size and three 1 MiB samples (start, middle, end): different weights of the same architecture
    tell apart without reading gigabytes."""
    h = hashlib.sha256()
    for folder in folders:
        for p in sorted(Path(folder).iterdir()):
            if not (p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
                continue
            size = p.stat().st_size
            h.update(p.name.encode() + b"\0" + str(size).encode() + b"\0")
            with p.open("rb") as fh:
                for at in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
                    fh.seek(at)
                    h.update(fh.read(SAMPLE))
    return h.hexdigest()


def check_vae(folder: Path) -> dict:
    """The config of a diffusers ``AutoencoderKLWan`` folder, or DataToolsError naming the file."""
    config = read_config(folder, "--vae")
    if config.get("_class_name") != VAE_CLASS:
        raise DataToolsError(f"{Path(folder) / 'config.json'}: --vae needs a diffusers "
                             f"{VAE_CLASS} folder, this one is {_describe_class(config)}")
    z = config.get("z_dim")
    for key in ("latents_mean", "latents_std"):
        if not isinstance(config.get(key), list) or len(config[key]) != z:
            raise DataToolsError(f"{Path(folder) / 'config.json'}: {key!r} must be a list of "
                                 f"z_dim={z} numbers")
    return config


def load_vae(folder: Path, device: str):
    """The frozen VAE (float32, eval mode) on ``device``."""
    from diffusers import AutoencoderKLWan

    check_vae(folder)
    try:
        vae = AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True,
                                               torch_dtype=_torch().float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataToolsError(f"{folder}: cannot load the {VAE_CLASS} ({exc})") from None
    return vae.to(device).eval().requires_grad_(False)


def check_text_encoder(folder: Path) -> dict:
    config = read_config(folder, "--text-encoder")
    archs = config.get("architectures") or []
    if TEXT_ENCODER_CLASS not in archs and not (not archs and config.get("model_type") == "umt5"):
        raise DataToolsError(f"{Path(folder) / 'config.json'}: --text-encoder needs a "
                             f"transformers {TEXT_ENCODER_CLASS} folder, this one is "
                             f"{_describe_class(config)}")
    return config


def find_tokenizer(encoder: Path, tokenizer: Path | None) -> Path:
    """``tokenizer`` if given, else the encoder folder when it holds tokenizer files, else the
    ``tokenizer`` folder beside it (the diffusers Wan layout: text_encoder/ + tokenizer/)."""
    candidates = [Path(tokenizer)] if tokenizer else [Path(encoder), Path(encoder).parent / "tokenizer"]
    for folder in candidates:
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    looked = " or ".join(str(c) for c in candidates)
    raise DataToolsError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {looked}; "
                         "pass --tokenizer DIR")


def load_text_encoder(folder: Path, tokenizer: Path | None, device: str):
    """(tokenizer, frozen UMT5 encoder in float32 on ``device``)."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    check_text_encoder(folder)
    tok_folder = find_tokenizer(folder, tokenizer)
    try:
        tok = AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"{tok_folder}: cannot load the tokenizer ({exc})") from None
    try:
        enc = UMT5EncoderModel.from_pretrained(str(folder), local_files_only=True,
                                               dtype=_torch().float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataToolsError(f"{folder}: cannot load the {TEXT_ENCODER_CLASS} ({exc})") from None
    if len(tok) > enc.config.vocab_size:
        raise DataToolsError(f"{tok_folder}: the tokenizer has {len(tok)} tokens, more than the "
                             f"encoder's vocab_size {enc.config.vocab_size} in {folder}/config.json")
    return tok, enc.to(device).eval().requires_grad_(False)


def check_device(device: str) -> None:
    """DataToolsError unless ``device`` names a torch device this machine has."""
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DataToolsError(f"--device {device!r}: not a torch device ({exc})") from None
    if dev.type == "cpu":
        return
    module = getattr(torch, dev.type, None)
    available = getattr(module, "is_available", None)
    if available is None or not available():
        raise DataToolsError(f"--device {device!r}: no {dev.type} device on this machine "
                             "(use --device cpu)")


def threads_per_worker(device: str, workers: int) -> int:
    """CPU threads for each of ``workers`` processes on a CPU device (0: leave torch's default,
    for one process or an accelerator): several processes each taking every core would
    oversubscribe it."""
    if workers <= 1 or not str(device).startswith("cpu"):
        return 0
    return max(1, (os.cpu_count() or 1) // workers)


def use_threads(threads: int) -> None:
    if threads:
        _torch().set_num_threads(threads)


def _torch():
    import torch

    return torch
