"""What a training invocation reports when it ends: steps, losses, throughput, where it saved."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunSummary:
    start_step: int
    end_step: int
    first_loss: float
    last_loss: float
    samples_per_s: float
    checkpoint: str
    mlflow_run_id: str
    resumed_from: str
    stopped: str = ""
    """Why the run stopped before its end step ('' = it reached it): a signal or 'wall time'."""
    skipped_steps: int = 0

    def render(self) -> str:
        lines = [
            "=" * 64,
            "wallwm-pretrain run summary",
            f"  steps            {self.start_step} -> {self.end_step}"
            + (f" (resumed from {self.resumed_from})" if self.resumed_from else ""),
            f"  loss             first {self.first_loss:.4f} -> last {self.last_loss:.4f}"
            "  (means over the first and last 10 steps of this invocation)",
            f"  samples/s        {self.samples_per_s:.1f}",
            f"  checkpoint       {self.checkpoint}",
            f"  MLflow run id    {self.mlflow_run_id}",
        ]
        if self.skipped_steps:
            lines.append(f"  skipped updates  {self.skipped_steps} (non-finite loss or gradient)")
        if self.stopped:
            lines.append(f"  stopped          by {self.stopped} after saving; run again to continue (exit code 75)")
        lines += [
            "=" * 64,
        ]
        return "\n".join(lines)
