"""The hand-off between training stages (``model.init_from``): which tensors a run takes from the
source, which keep their fresh initialisation, which of the source it does not use, by component.

Rule: by default the source must hold every tensor of the model and nothing else (a stage
starts from the whole previous model: its checkpoints hold frozen components too), so a wrong
folder fails naming tensors instead of silently starting a stage from random weights.
``model.init_from_partial=true`` allows both kinds of difference (a model that grew a
component, a source with one this model lacks); the report lists them either way. A tensor
whose shape differs always fails, naming it and both shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wallwm_pretrain.checkpoint.manifest import CheckpointError
from wallwm_pretrain.checkpoint.weights import load_init_weights
from wallwm_pretrain.components import CONTEXT_FROM, component_of
from wallwm_pretrain.config import ModelConfig


@dataclass
class HandoffReport:
    """Tensor names per component: taken from the source, left as initialised, not used."""

    source: str
    loaded: dict[str, list[str]] = field(default_factory=dict)
    new: dict[str, list[str]] = field(default_factory=dict)
    unused: dict[str, list[str]] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"model.init_from: weights of {self.source} (weights only: step 0, fresh optimizer and schedule)"]
        components = sorted(set(self.loaded) | set(self.new) | set(self.unused))
        lines.append(f"  {'component':18s} {'loaded':>8s} {'new':>8s} {'unused':>8s}")
        for c in components:
            lines.append(f"  {c:18s} {len(self.loaded.get(c, [])):8d} {len(self.new.get(c, [])):8d} "
                         f"{len(self.unused.get(c, [])):8d}")
        for kind, names in (("newly initialised", self.new), ("unused", self.unused)):
            for c in sorted(names):
                lines.append(f"  {kind} ({c}): {', '.join(names[c][:5])}" + (" ..." if len(names[c]) > 5 else ""))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"source": self.source, "loaded": self.loaded, "new": self.new, "unused": self.unused}


def _group(names, patterns: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in sorted(names):
        try:
            c = component_of(n, patterns)
        except KeyError:
            c = "(no component)"
        out.setdefault(c, []).append(n)
    return out


def handoff_report(source: str, source_names, model_names, patterns: dict[str, str]) -> HandoffReport:
    """Compare the source's tensor names with the whole model's (``_extra_state`` entries left
    out: megatron rebuilds them)."""
    src = {n for n in source_names if not n.endswith("._extra_state")}
    own = {n for n in model_names if not n.endswith("._extra_state")}
    return HandoffReport(source, _group(src & own, patterns), _group(own - src, patterns), _group(src - own, patterns))


def shape_mismatches(source_shapes: dict[str, tuple], model_shapes: dict[str, tuple]) -> list[str]:
    """``name: source [..] vs model [..]`` for every tensor both hold with different shapes."""
    return [f"{n}: source {list(source_shapes[n])} vs model {list(model_shapes[n])}"
            for n in sorted(source_shapes.keys() & model_shapes.keys())
            if tuple(source_shapes[n]) != tuple(model_shapes[n])]


def init_sources(cfg: ModelConfig) -> tuple[dict, str]:
    """The tensors a run starts from and where they came from: ``model.init_from``'s, plus the
    context sources' weights of their own stages (``model.context.conditioner_from`` /
    ``staircase_from``: the tensors under the prefixes of ``components.CONTEXT_FROM``, renamed
    under ``context.``; the source's other tensors, e.g. the conditioner's next-event head, are
    not this model's and are left out).

    Raises:
        CheckpointError: an unreadable source, or a context source without such tensors.
    """
    weights, where = {}, []
    if cfg.init_from:
        weights, first = load_init_weights(cfg.init_from)
        weights, where = dict(weights), [first]
    for key, prefixes in CONTEXT_FROM.items():
        path = getattr(cfg.context, key)
        if not path:
            continue
        tensors, desc = load_init_weights(path)
        taken = {f"context.{n}": v for n, v in tensors.items() if n.startswith(prefixes)}
        if not taken:
            raise CheckpointError(f"model.context.{key}={path} ({desc}) holds no {' / '.join(prefixes)} tensors "
                                  f"(is it the right stage's checkpoint?)")
        weights.update(taken)
        where.append(f"{desc} as context.{'/'.join(p.rstrip('.') for p in prefixes)}")
    return weights, " + ".join(where)
