"""``wan``: the whole model's starting weights from a diffusers ``WanTransformer3DModel`` folder.

The video tower is mapped from the checkpoint (``model/wan/from_diffusers.py``); everything the
checkpoint cannot have is initialised fresh, as a run would: the action tower, its coupling
projections, state/caption/time embedders and heads, and (``--num-views`` > 1) the cross-view
attention of every video block (output projection zero, so each view starts as the pretrained
single-view model) and the camera embeddings. The depth and the Wan shape come from the
checkpoint's config.json; the action tower's shape and the data dimensions from the run config
(``--config`` preset plus ``key=value`` overrides; ``model.action_dim`` and ``model.state_dim``
must be numbers here, as the shards' index.json would give them).

Writes a weights folder (``checkpoint/weights.py``): ``model.safetensors`` (canonical layout:
loads at any TP x PP), ``config.yaml`` (the run config with the checkpoint's ``model.wan``,
``model.num_layers``, ``model.num_views`` filled in: start a run from it) and ``report.json``
(``mapped``: model name -> diffusers name; ``new``: freshly initialised names; ``unused``:
diffusers names that map to nothing, an error unless ``--allow-unused``). Train from it with
``model.init_from=OUT``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from wallwm_pretrain.checkpoint.weights import save_weights
from wallwm_pretrain.config import AUTO, ConfigError, load_config, to_yaml
from wallwm_pretrain.model.wan import WanConfig, convert_tower_state, load_diffusers_folder
from wallwm_pretrain.model.wan_wallwm import WanWallWM, wan_config

from .errors import ConvertError

HELP = __doc__.split("\n\n", 1)[1].split("\n\nWrites")[0]


def model_config_for(src: Path, num_views: int, preset: str | None, overrides: list[str]):
    """The run config with the video tower of ``src``'s config.json."""
    config, _ = load_diffusers_folder(src)
    wcfg = WanConfig.from_diffusers(config, str(src / "config.json"), num_views=num_views)
    cfg = load_config(preset, overrides)
    missing = [n for n in ("action_dim", "state_dim") if getattr(cfg.model, n) == AUTO]
    if missing:
        raise ConvertError(
            f"the action tower needs {', '.join('model.' + n for n in missing)}: pass them as key=value "
            "(the values the shards' index.json records)"
        )
    model = replace(cfg.model, video_tower="wan", wan=wcfg.shape(), num_layers=wcfg.num_layers, num_views=num_views,
                    init_from="")
    return replace(cfg, model=model)


def convert(src: Path, out: Path, *, num_views: int = 1, allow_unused: bool = False, seed: int = 0,
            preset: str | None = None, overrides: list[str] = ()) -> dict:
    """Write the weights folder; returns the report."""
    cfg = model_config_for(src, num_views, preset, list(overrides))
    wcfg, tower_state, tower_report = convert_tower_state(src, num_views=num_views, seed=seed,
                                                          allow_unused=allow_unused, init_std=cfg.model.init_std)
    assert wcfg == wan_config(cfg.model), (wcfg, wan_config(cfg.model))
    torch.manual_seed(seed)
    model = WanWallWM(cfg.model)
    model.video.load_state_dict(tower_state)
    state = model.state_dict()
    mapped = {f"video.{n}": d for n, d in tower_report.mapped.items()}
    report = {
        "source": str(src),
        "mapped": mapped,
        "new": [n for n, v in state.items() if isinstance(v, torch.Tensor) and n not in mapped],
        "unused": tower_report.unused,
    }
    save_weights(out, state, to_yaml(cfg), report)
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("wan", help="the whole model's starting weights from a diffusers Wan transformer",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, required=True,
                   help="a diffusers WanTransformer3DModel folder (config.json + safetensors, sharded or not)")
    p.add_argument("--out", type=Path, required=True, help="the weights folder to write")
    p.add_argument("--num-views", type=int, default=1, help="camera views (> 1 adds cross-view attention)")
    p.add_argument("--allow-unused", action="store_true", help="go on when checkpoint tensors map to nothing")
    p.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised parts (default 0)")
    p.add_argument("--config", default=None, help="run config preset (YAML) for the action tower's shape")
    p.add_argument("overrides", nargs="*", help="key=value run config overrides, e.g. model.action_dim=7")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = convert(args.src, args.out, num_views=args.num_views, allow_unused=args.allow_unused,
                         seed=args.seed, preset=args.config, overrides=args.overrides)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        raise ConvertError(str(exc)) from None
    print(json.dumps({"out": str(args.out), "mapped": len(report["mapped"]), "new": len(report["new"]),
                      "unused": report["unused"]}))
    return 0
