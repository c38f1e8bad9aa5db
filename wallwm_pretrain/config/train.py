"""The ``train`` section: the training loop, checkpoints and time limits (read by the trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wallwm_pretrain.config.base import ConfigError


def parse_duration(text: str) -> Optional[float]:
    """Seconds in ``[D-]HH:MM:SS``, ``MM:SS`` or a plain number of seconds; None for ``""``.

    Raises:
        ValueError: anything else, or a negative duration.
    """
    text = str(text).strip()
    if not text:
        return None
    days, _, clock = text.rpartition("-") if "-" in text and ":" in text else ("", "", text)
    try:
        parts = [float(p) for p in clock.split(":")]
        if len(parts) > 3 or (days and len(parts) != 3):
            raise ValueError
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
        seconds += float(days or 0) * 86400
    except ValueError:
        raise ValueError(f"expected [D-]HH:MM:SS or seconds, got {text!r}") from None
    if seconds < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return seconds


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 200
    """Optimizer steps to reach (a resumed run continues up to this step)."""
    stop_after: int = 0
    """Stop this invocation at this global step (0 = at ``steps``), e.g. to fit a job's time
    limit; the learning-rate schedule still spans ``steps`` and a later run resumes."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda:LOCAL_RANK when a GPU is present, else cpu), ``cpu`` or ``cuda``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``."""
    log_every: int = 10
    save_every: int = 100
    """Save a checkpoint every N steps (and always at the last step); 0 = only at the end."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in the run folder, if any), ``none``, or a path."""
    runs_root: str = "runs"
    run_name: str = "smoke"
    """The run folder is ``runs_root/run_name``."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept in the run folder (older ones are deleted after a save)."""
    keep_every: int = 0
    """Milestones: checkpoints at multiples of this step are kept forever, beside the newest
    ``keep_checkpoints`` (0 = none)."""
    save_format: str = "sharded"
    """``sharded``: every rank writes its own pieces of the canonical tensors (one safetensors
    file per rank, plus an index), the one way training saves; ``gathered``: the same save, then
    rank 0 rewrites the step in the layout of earlier versions (whole model and optimizer files),
    as ``python -m wallwm_pretrain.checkpoint merge`` does offline. Both resume under any layout."""
    async_save: bool = False
    """Write checkpoints on a background thread while training continues (``sharded`` only):
    the step boundary only copies the state off the accelerator; at most one save is in flight,
    and the next save, a stop and the end of the run wait for it."""
    peak_tflops: float = 0.0
    """Dense bf16 peak of one device in TFLOP/s, for the MFU in the step log; 0 = from the GPU's
    name (H100, H200, A100, L40S, A10G). No MFU on CPUs."""
    microbatches: int = 1
    """Microbatches per optimizer step on each data-parallel rank: ``data.batch_size`` rows are
    cut into this many equal microbatches whose gradients accumulate before the step (pipeline
    ranks work on different microbatches at once). The update equals that of one batch."""
    max_skipped_steps: int = 20
    """Stop the run (with an error) once this many steps had a non-finite loss or gradient
    norm in total; such a step's update is skipped on every rank. 0 = stop at the first."""
    max_consecutive_skipped: int = 5
    """Stop the run (with an error) once this many steps in a row were skipped as non-finite."""
    max_wall_time: str = ""
    """Wall-clock budget of one invocation, ``[D-]HH:MM:SS`` or seconds (empty = none). The
    trainer saves and exits (code 75, to be run again) before it runs out, keeping back the
    longest save and step measured so far; under Slurm the job's end time counts too."""
    exit_margin_s: float = 30.0
    """Seconds kept back before ``max_wall_time`` or the job's end on top of the measured
    save and step (start-up of the next step, the exit itself)."""
    video_eval_every: int = 0
    """Every N steps, rank 0 predicts the video of a few fixed held-out events from their first
    frame, caption and state, and logs PSNR and SSIM (the model and the copy-the-first-frame
    baseline) and a recorded / predicted / error grid per task to MLflow, as ``python -m
    wallwm_pretrain.eval worldmodel`` does on a checkpoint; 0 = off. Small towers in event or
    chunk mode with the whole model on each process (``parallel.tp = pp = 1``); a run of another
    kind says at its start why it goes on without it (so a preset can turn it on for all)."""
    video_eval_shards: str = ""
    """Held-out event shards for ``video_eval_every`` (empty: ``data.shards``, whose events the
    model also trains on)."""
    video_eval_events: int = 4
    """Events (the first of ``video_eval_shards``, in file order) of each ``video_eval_every``."""
    video_eval_denoise_steps: int = 10
    """Euler steps of the flow per predicted event in ``video_eval_every``."""

    def __post_init__(self) -> None:
        if self.max_skipped_steps < 0 or self.max_consecutive_skipped < 0:
            raise ConfigError(
                f"train.max_skipped_steps and train.max_consecutive_skipped must be >= 0, got "
                f"{self.max_skipped_steps} and {self.max_consecutive_skipped}"
            )
        if self.keep_every < 0:
            raise ConfigError(f"train.keep_every must be >= 0 (0 = no milestones), got {self.keep_every}")
        if self.save_format not in ("sharded", "gathered"):
            raise ConfigError(f"train.save_format must be 'sharded' or 'gathered', got {self.save_format!r}")
        if self.async_save and self.save_format != "sharded":
            raise ConfigError("train.async_save=true needs train.save_format=sharded")
        if self.video_eval_every < 0 or self.video_eval_events < 1 or self.video_eval_denoise_steps < 1:
            raise ConfigError(
                f"train.video_eval_every must be >= 0 (0 = off), train.video_eval_events and "
                f"train.video_eval_denoise_steps >= 1, got {self.video_eval_every}, {self.video_eval_events} and "
                f"{self.video_eval_denoise_steps}"
            )
        if self.exit_margin_s < 0:
            raise ConfigError(f"train.exit_margin_s must be >= 0, got {self.exit_margin_s}")
        try:
            self.max_wall_time_s
        except ValueError as exc:
            raise ConfigError(f"train.max_wall_time: {exc}") from None
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if self.microbatches < 1:
            raise ConfigError(f"train.microbatches must be >= 1, got {self.microbatches}")
        if self.stop_after < 0 or self.stop_after > self.steps:
            raise ConfigError(f"train.stop_after must be in [0, train.steps={self.steps}], got {self.stop_after}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.run_name

    @property
    def max_wall_time_s(self) -> Optional[float]:
        """``max_wall_time`` in seconds (None = no budget)."""
        return parse_duration(self.max_wall_time)
