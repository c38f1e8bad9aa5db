"""Export a training checkpoint as one consolidated model for inference.

    python -m wallwm_pretrain.export --ckpt runs/smoke/checkpoints/step_00000240 --out wallwm_smoke.safetensors

Checkpoints hold the model in the single-process layout (whole in a gathered checkpoint; as
pieces of the whole tensors, read and joined here, in a sharded one), so export keeps only the
weights: one safetensors file whose
metadata carries the resolved run config (YAML) and the step, plus the config beside it as
``<out>.yaml``. :func:`load_exported` rebuilds the model on one process from that file alone,
from local layers (no process group, no ``torch.distributed``; see ``model/spec.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

from wallwm_pretrain.checkpoint import CheckpointError, load_model_state, resolve_resume
from wallwm_pretrain.checkpoint.stable import save_file_stable


def _checkpoint_folder(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt)
    if not (ckpt / "manifest.json").is_file():  # a run folder: its newest complete checkpoint
        ckpt = resolve_resume(ckpt, "auto") or ckpt
    return ckpt


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write the consolidated model of checkpoint ``ckpt`` (a step folder or a run folder)."""
    step, model, config_yaml = load_model_state(_checkpoint_folder(ckpt))
    tensors = {k: v.contiguous() for k, v in model.items() if isinstance(v, torch.Tensor)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file_stable(tensors, out, metadata={"format": "wallwm-model/1", "step": str(step), "config": config_yaml})
    out.with_suffix(out.suffix + ".yaml").write_text(config_yaml)
    return out


def load_exported(path: str | Path, device: str = "cpu"):
    """The model of an exported file on one process (local layers, no process group needed).

    Returns:
        (model, config): the model its config names (``model.kind``, ``model.video_tower``) in
        eval mode, and its run config.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "wallwm-model/1":
        raise CheckpointError(f"{path}: not a wallwm export (metadata format {meta.get('format')!r})")
    return _build(meta["config"], load_file(str(path), device=device), device)


def _build(config_yaml: str, weights: dict, device: str):
    from wallwm_pretrain.config import config_from_stored
    from wallwm_pretrain.model import build_model

    cfg = config_from_stored(config_yaml)  # translates configs written before keys moved
    # no pg_collection: local layers, which load the megatron-built model's state dict as it is
    model = build_model(cfg.model)
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), cfg


def load_model(path: str | Path, device: str = "cpu"):
    """(model in eval mode, run config) from an exported ``.safetensors`` file, a checkpoint
    step folder, or a run folder (its newest complete checkpoint); built from local layers,
    with no process group."""
    path = Path(path)
    if path.is_file():
        return load_exported(path, device)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint (give a run folder, a step folder or an exported .safetensors)")
    _, model, config_yaml = load_model_state(_checkpoint_folder(path))
    weights = {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}
    return _build(config_yaml, weights, device)


def checkpoint_step(path: str | Path) -> int | None:
    """The training step of an exported file, a checkpoint step folder or a run folder's newest
    checkpoint (None when the file or folder does not say)."""
    path = Path(path)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
        return int(step) if step is not None else None
    manifest = _checkpoint_folder(path) / "manifest.json"
    if not manifest.is_file():
        return None
    import json

    return json.loads(manifest.read_text()).get("step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.export", description=__doc__.splitlines()[0],
        epilog="Example: python -m wallwm_pretrain.export --ckpt runs/smoke --out wallwm_smoke.safetensors",
    )
    parser.add_argument("--ckpt", required=True, help="a checkpoint step folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write (config also as <out>.yaml)")
    args = parser.parse_args(argv)
    try:
        path = export(args.ckpt, args.out)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (+ {path.name}.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
