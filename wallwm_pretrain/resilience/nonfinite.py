"""Skipped steps: a step whose loss or gradient norm is not finite is not applied.

The decision is collective (:func:`~.agree.agree`), so every rank skips the same step: the
weights, the optimizer state and the learning-rate schedule stay as they were, the step counter
does not advance, and the loader has moved past the batch. :class:`SkipBook` counts such steps
(in a row and in total, the total surviving resumes through the checkpoint) and raises
:class:`NonFiniteError` once a limit is reached: a run that keeps producing NaNs is broken and
should stop with a message rather than spin through its data.

Trade-off: a skipped step costs its whole forward and backward; no loss scaling is attempted
(fp32 and bf16 need none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class NonFiniteError(RuntimeError):
    """Too many non-finite steps, or a state about to be saved is not finite."""


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class SkipBook:
    """Counts skipped steps and enforces ``train.max_skipped_steps`` / ``max_consecutive_skipped``."""

    max_total: int
    max_consecutive: int
    total: int = 0
    consecutive: int = 0
    steps: list[int] = field(default_factory=list)
    """Optimizer steps at which an update was skipped (a step may appear more than once)."""

    def record(self, step: int, losses: dict[str, float], grad_norm: float) -> str:
        """Count a skipped update at ``step``; returns the log line.

        Raises:
            NonFiniteError: a limit is reached (the message has the step and the losses).
        """
        self.total += 1
        self.consecutive += 1
        self.steps.append(step)
        parts = ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
        line = (
            f"step {step}: non-finite loss or gradient ({parts}, grad norm {grad_norm:.4g}); update skipped on "
            f"all ranks ({self.consecutive} in a row, {self.total} in total)"
        )
        if self.total > self.max_total or self.consecutive > self.max_consecutive:
            which = (
                f"{self.consecutive} in a row > train.max_consecutive_skipped={self.max_consecutive}"
                if self.consecutive > self.max_consecutive
                else f"{self.total} in total > train.max_skipped_steps={self.max_total}"
            )
            raise NonFiniteError(
                f"{line}; stopping: {which} (skipped at steps {self.steps[-10:]}). Look for bad samples "
                "in the batches of these steps, lower optim.lr or raise optim.warmup_steps."
            )
        return line

    def applied(self) -> None:
        """A step was applied: the run of skips in a row ends."""
        self.consecutive = 0

    def state_dict(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive, "steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.steps = [int(s) for s in state.get("steps", [])]
