"""``to-diffusers``: a trained Wan video tower back as a diffusers ``WanTransformer3DModel`` folder.

Reads a run folder (its newest complete checkpoint), a checkpoint step folder (gathered or
sharded layout), a weights folder (``convert wan``) or an exported ``.safetensors`` file of a
``model.video_tower=wan`` run, renames the video tower's tensors with the same table ``convert
wan`` reads the other way (``model/wan/from_diffusers.py``), and has diffusers' own
``save_pretrained`` write them, so that ``WanTransformer3DModel.from_pretrained(OUT)`` loads the
trained tower. Everything else of the model is written beside it, never dropped: the parts Wan
has no place for (cross-view attention and camera embeddings of every block), the action tower
with its coupling projections, embedders and heads, and (``--conditioner``) the text
conditioner's heads, each as plain safetensors under the project's names with the run config.

Layout of OUT::

    config.json                               diffusers' config of the transformer
    diffusion_pytorch_model*.safetensors      the video tower (sharded, with the .index.json, when
                                              larger than --max-shard-size)
    wallwm/video_multiview.safetensors        the grafted multi-view parts (absent with one view)
    wallwm/action_tower.safetensors           action tower, coupling, embedders, action and time heads
    wallwm/config.yaml                        the run config of the checkpoint
    wallwm/conditioner_heads.safetensors      with --conditioner: its heads, and conditioner_config.yaml
    wallwm/report.json, wallwm/report.md      every tensor: file, shape, dtype, part (and diffusers name)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wallwm_pretrain.checkpoint import CheckpointError
from wallwm_pretrain.checkpoint.stable import save_file_stable
from wallwm_pretrain.checkpoint.weights import read_model_source
from wallwm_pretrain.config import ConfigError, config_from_stored
from wallwm_pretrain.model.wan import split_for_diffusers
from wallwm_pretrain.model.wan.from_diffusers import tower_name
from wallwm_pretrain.model.wan_wallwm import wan_config

from .errors import ConvertError

HELP = __doc__.split("\n\n", 1)[1]
EXTRAS = "wallwm"

# What each top-level part of the denoiser beside the video tower is (for the report).
PARTS = {
    "action_layers": "action tower blocks (self-, state-, coupling cross-attention, FFN) and coupling projections",
    "action_in": "action tower input embedding",
    "action_group_pos": "action token's place inside its latent frame's group",
    "state_in": "proprioceptive state token embedding",
    "action_out": "action head (velocity of the action tokens)",
    "time_action": "action flow-time embedder",
    "text_in": "caption states -> action width projection",
    "time_head": "remaining-time head",
}


def _read(source: str | Path, flag: str):
    """(tensors, config YAML, run config, description) of what ``flag`` names."""
    try:
        tensors, config_yaml, description = read_model_source(source, flag)
    except CheckpointError as exc:
        raise ConvertError(str(exc)) from None
    if not config_yaml:
        raise ConvertError(f"{flag} {source}: {description} stores no run config, so its model cannot be told")
    try:
        cfg = config_from_stored(config_yaml)
    except ConfigError as exc:
        raise ConvertError(f"{flag} {source}: its stored run config does not load ({exc})") from None
    return tensors, config_yaml, cfg, description


def _part(name: str) -> str:
    top = name.split(".", 1)[0]
    return PARTS.get(top, top)


def _entry(name: str, tensor: torch.Tensor, file: str, part: str) -> dict:
    return {"name": name, "file": file, "part": part, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def save_diffusers(state: dict[str, torch.Tensor], diffusers_config: dict, out: Path, max_shard_size: str) -> None:
    """Write ``state`` (diffusers names) as a ``WanTransformer3DModel`` folder through diffusers'
    ``save_pretrained``; the model is built on the meta device and takes the tensors as they are
    (``assign``), so nothing is copied or cast, and a missing or extra tensor is an error."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(diffusers_config)
    result = model.load_state_dict({n: t.contiguous() for n, t in state.items()}, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConvertError(f"the video tower does not fill diffusers' WanTransformer3DModel: missing "
                           f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=True)


def to_diffusers(ckpt: str | Path, out: str | Path, *, max_shard_size: str = "5GB",
                 conditioner: str | Path | None = None) -> dict:
    """Write OUT (see the module's docstring); returns the report."""
    tensors, config_yaml, cfg, description = _read(ckpt, "--ckpt")
    if cfg.model.kind != "towers":
        raise ConvertError(f"--ckpt {ckpt}: {description} is a model.kind={cfg.model.kind} checkpoint, not the towers; "
                           "give the towers' checkpoint (and a conditioner's as --conditioner)")
    if cfg.model.video_tower != "wan":
        raise ConvertError(f"--ckpt {ckpt}: {description} has the small video tower (model.video_tower="
                           f"{cfg.model.video_tower}), which has no diffusers form: only a Wan video tower "
                           "(model.video_tower=wan) is written as a WanTransformer3DModel")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"--out {out} exists and is not an empty folder")
    video = {n.removeprefix("video."): t for n, t in tensors.items() if n.startswith("video.")}
    rest = {n: t for n, t in tensors.items() if not n.startswith("video.")}
    try:
        diffusers_state, grafted = split_for_diffusers(video)
    except ValueError as exc:
        raise ConvertError(f"--ckpt {ckpt}: {exc}") from None
    diffusers_config = wan_config(cfg.model).diffusers_config()
    out.mkdir(parents=True, exist_ok=True)
    save_diffusers(diffusers_state, diffusers_config, out, max_shard_size)

    extras = out / EXTRAS
    extras.mkdir()
    beside: list[dict] = []

    def write(name: str, state: dict[str, torch.Tensor], part) -> None:
        if state:
            save_file_stable({n: t.contiguous() for n, t in state.items()}, extras / name,
                             {"source": description})
            beside.extend(_entry(n, t, f"{EXTRAS}/{name}", part(n)) for n, t in sorted(state.items()))

    write("video_multiview.safetensors", {f"video.{n}": t for n, t in grafted.items()},
          lambda n: "cross-view attention and camera embedding (Wan has no multi-view part)")
    write("action_tower.safetensors", rest, _part)
    (extras / "config.yaml").write_text(config_yaml)
    conditioner_source = None
    if conditioner is not None:
        heads, heads_yaml, heads_cfg, conditioner_source = _read(conditioner, "--conditioner")
        if heads_cfg.model.kind != "conditioner":
            raise ConvertError(f"--conditioner {conditioner}: {conditioner_source} is a model.kind="
                               f"{heads_cfg.model.kind} checkpoint, not the text conditioner's heads")
        write("conditioner_heads.safetensors", heads, lambda n: "text conditioner head " + n.split(".", 1)[0])
        (extras / "conditioner_config.yaml").write_text(heads_yaml)
    report = {
        "source": description,
        "conditioner": conditioner_source,
        "diffusers": {name: f"video.{tower_name(name)}" for name in sorted(diffusers_state)},
        "beside": beside,
    }
    (extras / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (extras / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """The report as a page a person reads: what went where."""
    lines = [f"# Export of {report['source']}", "",
             f"The video tower: {len(report['diffusers'])} tensors in the diffusers WanTransformer3DModel "
             "folder (`WanTransformer3DModel.from_pretrained` of this folder's parent).", ""]
    if report["conditioner"]:
        lines += [f"Text conditioner heads from {report['conditioner']}.", ""]
    lines += ["Written beside it (the project's names; nothing is dropped):", "",
              "| tensor | file | shape | dtype | part |", "|---|---|---|---|---|"]
    lines += [f"| `{e['name']}` | {e['file']} | {e['shape']} | {e['dtype']} | {e['part']} |" for e in report["beside"]]
    return "\n".join(lines) + "\n"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("to-diffusers", help="a trained Wan video tower as a diffusers WanTransformer3DModel folder",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="a run folder (its newest checkpoint), a checkpoint step folder, a weights folder or an export")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist or be empty)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file diffusers writes (default 5GB)")
    p.add_argument("--conditioner", default=None, help="a text conditioner checkpoint whose heads to write beside")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = to_diffusers(args.ckpt, args.out, max_shard_size=args.max_shard_size, conditioner=args.conditioner)
    print(json.dumps({"out": str(args.out), "diffusers": len(report["diffusers"]), "beside": len(report["beside"])}))
    return 0
