"""diffusers ``WanTransformer3DModel`` weights <-> the video tower's parameter names.

Reads a diffusers model folder (``config.json`` plus ``diffusion_pytorch_model.safetensors``,
or the shards its ``.safetensors.index.json`` lists) and renames every tensor to the tower's
names, as whole (TP=1) tensors: the canonical checkpoint layout, which loads at any TP/PP. The
renaming is a fixed table (:data:`RULES`); shapes are checked against the tower built on the
meta device from the same config. Parameters the checkpoint cannot have (cross-view attention,
camera embeddings) are reported as new; a checkpoint tensor that maps to nothing is an error
unless allowed, so a checkpoint of another variant is never half-loaded silently.

The way back (:func:`split_for_diffusers`, used by ``convert to-diffusers``) reads the same
table right to left and sets the grafted parts apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from wallwm_pretrain.model.wan.config import WanConfig
from wallwm_pretrain.model.wan.tower import WanTower

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"

# One table, read in both directions: (diffusers name, tower name) templates whose fields match
# {i} a block index, {wb} weight/bias, {n} linear_1/linear_2. ``convert wan`` reads it left to
# right (tower_name), ``convert to-diffusers`` right to left (diffusers_name), so the two
# directions cannot drift apart.
_FIELDS = {"i": r"\d+", "wb": r"weight|bias", "n": r"linear_[12]"}
_ATTENTION = {"to_q": "linear_q", "to_k": "linear_k", "to_v": "linear_v", "to_out.0": "linear_proj",
              "norm_q": "q_norm", "norm_k": "k_norm"}
RULES: list[tuple[str, str]] = [
    ("patch_embedding.{wb}", "patch_embedding.{wb}"),
    ("condition_embedder.time_embedder.{n}.{wb}", "condition_embedder.time_embedder.{n}.{wb}"),
    ("condition_embedder.time_proj.{wb}", "condition_embedder.time_proj.{wb}"),
    ("condition_embedder.text_embedder.{n}.{wb}", "condition_embedder.text_embedder.{n}.{wb}"),
    *[
        (f"blocks.{{i}}.{attn}.{src}.{{wb}}", f"blocks.{{i}}.{ours}.{dst}.{{wb}}")
        for attn, ours in (("attn1", "self_attention"), ("attn2", "cross_attention"))
        for src, dst in _ATTENTION.items()
    ],
    ("blocks.{i}.norm2.{wb}", "blocks.{i}.cross_attention_norm.{wb}"),
    ("blocks.{i}.ffn.net.0.proj.{wb}", "blocks.{i}.mlp.linear_fc1.{wb}"),
    ("blocks.{i}.ffn.net.2.{wb}", "blocks.{i}.mlp.linear_fc2.{wb}"),
    ("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"),
    ("scale_shift_table", "head_modulation"),
    ("proj_out.{wb}", "proj_out.{wb}"),
]


def _pattern(template: str) -> re.Pattern:
    """A name template as a regular expression with one named group per field."""
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    body = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for k, p in enumerate(parts))
    return re.compile(body + r"\Z")


_FORWARD = [(_pattern(d), t) for d, t in RULES]
_BACKWARD = [(_pattern(t), d) for d, t in RULES]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


def tower_name(diffusers_name: str) -> str | None:
    """The tower's name for a diffusers tensor name (None: no rule covers it)."""
    return _rename(diffusers_name, _FORWARD)


def diffusers_name(tower_name: str) -> str | None:
    """The diffusers name of a tower parameter (None: the tower's own part, e.g. cross-view
    attention and the camera embeddings, which Wan has no place for)."""
    return _rename(tower_name, _BACKWARD)


@dataclass
class MappingReport:
    """The outcome of mapping a diffusers state dict onto the tower.

    Attributes:
        tensors: tower name -> whole tensor (canonical layout).
        mapped: tower name -> the diffusers name it came from.
        new: tower parameters the checkpoint does not provide (initialised fresh).
        unused: diffusers names that map to no tower parameter.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Counts and names, for the conversion log (no tensors)."""
        return {"mapped": len(self.mapped), "new": self.new, "unused": self.unused}


def load_diffusers_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state dict)`` of a diffusers ``WanTransformer3DModel`` folder.

    Raises:
        FileNotFoundError: no config.json, or neither the single safetensors file nor the shard
            index (naming the paths looked for), or a shard the index lists.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = " (a pipeline folder? point at its transformer/ subfolder)" if (folder / "transformer").is_dir() else ""
        raise FileNotFoundError(f"no diffusers model config at {config_path}{hint}")
    config = json.loads(config_path.read_text())
    single, index = folder / WEIGHTS, folder / INDEX
    if single.is_file():
        return config, load_file(single)
    if not index.is_file():
        raise FileNotFoundError(f"no weights in {folder}: looked for {single} and {index}")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in shards:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{index} lists the shard {path}, which does not exist")
        state.update(load_file(path))
    return config, state


def map_diffusers_state(state: dict[str, torch.Tensor], config: dict | WanConfig, *, num_views: int = 1,
                        allow_unused: bool = False, source: str = "state dict") -> MappingReport:
    """Rename a diffusers Wan state dict to the whole tower's names and check shapes.

    Args:
        state: diffusers tensor name -> tensor.
        config: the diffusers config.json as a dict, or a :class:`WanConfig`.
        num_views: views of the tower to build (> 1 adds cross-view attention: new parameters).
        allow_unused: keep going when checkpoint tensors map to nothing (listed in ``unused``).
        source: where ``state`` came from (named in errors).

    Raises:
        ValueError: unused tensors (unless allowed, naming them), a tower parameter the
            checkpoint should have but lacks, or a shape mismatch (naming both names).
    """
    cfg = config if isinstance(config, WanConfig) else WanConfig.from_diffusers(config, source, num_views=num_views)
    with torch.device("meta"):
        expected = {n: p.shape for n, p in WanTower(cfg, seed=0).named_parameters()}
    report = MappingReport()
    for name, tensor in state.items():
        ours = tower_name(name)
        if ours is None or ours not in expected:
            report.unused.append(name)
            continue
        if tuple(tensor.shape) != tuple(expected[ours]):
            raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, the tower's {ours} is {tuple(expected[ours])}")
        report.tensors[ours] = tensor
        report.mapped[ours] = name
    fresh = [n for n in expected if n not in report.tensors]
    missing = [n for n in fresh if ".cross_view." not in n]
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks tensors for {missing[:5]} ({len(missing)} in all)")
    report.new = fresh
    if report.unused and not allow_unused:
        raise ValueError(
            f"{source}: {len(report.unused)} tensors map to no tower parameter: {report.unused[:10]} "
            "(allow unused tensors to load anyway)"
        )
    return report


def load_diffusers_weights(tower: WanTower, folder: str | Path, *, allow_unused: bool = False) -> MappingReport:
    """Load a diffusers folder into a tower holding whole tensors (no tensor parallelism);
    a pipeline slice loads its own parts. New parameters keep their initial values.

    Raises:
        ValueError: see :func:`map_diffusers_state`; also a config other than the tower's.
    """
    config, state = load_diffusers_folder(folder)
    cfg = WanConfig.from_diffusers(config, str(Path(folder) / "config.json"), num_views=tower.cfg.num_views,
                                   init_std=tower.cfg.init_std)
    if cfg != tower.cfg:
        raise ValueError(f"{folder}: the checkpoint's config {cfg} is not the tower's {tower.cfg}")
    report = map_diffusers_state(state, cfg, allow_unused=allow_unused, source=str(folder))
    own = dict(tower.named_parameters())
    for name, tensor in report.tensors.items():
        if name in own and own[name].shape != tensor.shape:
            raise ValueError(
                f"{name}: the tower holds a {tuple(own[name].shape)} slice of the {tuple(tensor.shape)} tensor "
                "(tensor parallel); load the mapped whole tensors through the canonical checkpoint layout instead"
            )
    with torch.no_grad():
        for name, tensor in report.tensors.items():
            if name in own:
                own[name].copy_(tensor)
    return report


def convert_tower_state(folder: str | Path, *, num_views: int = 1, seed: int = 0, allow_unused: bool = False,
                        init_std: float = 0.02) -> tuple[WanConfig, dict[str, torch.Tensor], MappingReport]:
    """The whole tower's canonical state from a diffusers folder: the checkpoint's tensors
    under the tower's names, the new parameters (cross-view attention with its zero output
    projection, zero cameras) as initialised with ``seed``; loads strictly into a tower of the
    returned config built with or without process groups (through the canonical layout).

    Returns:
        ``(config, state dict, report)``.
    """
    config, _ = load_diffusers_folder(folder)
    cfg = WanConfig.from_diffusers(config, str(Path(folder) / "config.json"), num_views=num_views, init_std=init_std)
    tower = WanTower(cfg, seed=seed)
    report = load_diffusers_weights(tower, folder, allow_unused=allow_unused)
    return cfg, tower.state_dict(), report


def split_for_diffusers(tower_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse of :func:`map_diffusers_state`: a whole tower's state (the tower's names, no
    ``video.`` prefix) as ``(diffusers name -> tensor, tower name -> tensor Wan has no place for)``.

    The second part is the grafted multi-view part (cross-view attention, camera embeddings);
    the caller writes it beside the diffusers folder.

    Raises:
        ValueError: a tensor that is neither a Wan weight nor a grafted part, naming it (a
            tower of another variant is never written half).
    """
    diffusers, grafted, unknown = {}, {}, []
    for name, tensor in tower_state.items():
        theirs = diffusers_name(name)
        if theirs is not None:
            diffusers[theirs] = tensor
        elif ".cross_view." in name:
            grafted[name] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{len(unknown)} video tower tensors have no diffusers name and are not grafted parts: "
                         f"{unknown[:5]}")
    return diffusers, grafted
