"""The recipe's summary table: per stage its steps, what this invocation did, the first and last
loss of each loss term (means over the first and last 10 logged steps of the whole stage, from
the history its newest checkpoint carries) and the checkpoint."""

from __future__ import annotations

import json
import math

from wallwm_pretrain.recipe.state import StageState

WINDOW = 10


def stage_losses(state: StageState) -> dict[str, tuple[float, float]]:
    """Loss term -> (mean of the first, mean of the last ``WINDOW`` steps) of the stage so far."""
    if state.checkpoint is None:
        return {}
    from wallwm_pretrain.checkpoint import load_trainer_state

    trainer, _ = load_trainer_state(state.checkpoint)
    history = json.loads(trainer["history"])
    out = {}
    for key, points in history.items():
        values = [v for _, v in points]
        if values:
            out[key] = (sum(values[:WINDOW]) / len(values[:WINDOW]), sum(values[-WINDOW:]) / len(values[-WINDOW:]))
    return out


def loss_weight(state: StageState, key: str) -> float | None:
    """The weight of a loss term in the stage's total (None: not a weighted term)."""
    return state.cfg.model.loss_weights().get(key)


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def render_summary(name: str, states: list[StageState]) -> str:
    rows = []
    for s in states:
        losses = stage_losses(s)
        terms = [k for k in losses if k != "loss"]
        # a term weighted 0 is measured but not trained on: marked "(off)"
        loss_text = ", ".join(
            f"{k.removeprefix('loss_')} {_fmt(losses[k][0])}->{_fmt(losses[k][1])}"
            + (" (off)" if loss_weight(s, k) == 0 else "") for k in terms
        ) or "-"
        rows.append((s.stage.name, f"{s.step}/{s.steps}", s.action or "-", loss_text,
                     str(s.checkpoint) if s.checkpoint else "-"))
    head = ("stage", "steps", "this run", f"loss per term (first->last, means of {WINDOW} steps)", "checkpoint")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    bar = "=" * max(64, len(line(head)))
    return "\n".join([bar, f"wallwm-pretrain recipe {name}", line(head), *(line(r) for r in rows), bar])
