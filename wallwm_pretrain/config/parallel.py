"""The ``parallel`` section: the model-parallel layout and the watchdog (read by ``wallwm_pretrain.parallel``)."""

from __future__ import annotations

from dataclasses import dataclass

from wallwm_pretrain.config.base import ConfigError


@dataclass
class ParallelConfig:
    """Model-parallel layout; data parallel size is derived from the world size."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size: each pipeline rank holds consecutive coupled layers."""
    vpp: int = 1
    """Virtual chunks per pipeline rank (interleaved 1F1B): each rank holds ``vpp``
    non-adjacent chunks of layers, which shrinks the pipeline bubble by that factor at the cost
    of ``vpp`` times more messages between pipeline ranks. 1 = plain 1F1B."""
    cp: int = 1
    """Context-parallel size: each sample's video and action tokens are split along the
    sequence over ``cp`` ranks (Ulysses attention: an all-to-all trades the sequence split for a
    head split around every attention over the split tokens), so activation memory per rank
    falls by about ``cp``. The attention heads of one tensor-parallel rank must divide by it.
    world = tp * pp * cp * dp."""
    timeout_s: float = 600.0
    """Collective timeout, and how long a rank may stay in one phase of a step (data,
    forward/backward, optimizer) before the watchdog stops the run naming the rank, step and
    phase. Saves and loads get ``save_timeout_s`` instead."""
    save_timeout_s: float = 3600.0
    """How long a save or a load may take before the watchdog stops the run."""
    heartbeat_s: float = 5.0
    """How often each rank's watchdog publishes its heartbeat (step, phase) to the run folder
    and reads the others'; 0 turns the watchdog off."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.save_timeout_s <= 0 or self.heartbeat_s < 0:
            raise ConfigError(
                f"parallel.timeout_s and parallel.save_timeout_s must be > 0 and parallel.heartbeat_s >= 0, "
                f"got {self.timeout_s}, {self.save_timeout_s}, {self.heartbeat_s}"
            )
        if self.tp < 1 or self.pp < 1 or self.vpp < 1 or self.cp < 1:
            raise ConfigError(
                f"parallel.tp, parallel.pp, parallel.vpp and parallel.cp must be >= 1, got tp={self.tp}, pp={self.pp}, "
                f"vpp={self.vpp}, cp={self.cp}"
            )
        if self.vpp > 1 and self.pp == 1:
            raise ConfigError(f"parallel.vpp={self.vpp} interleaves pipeline ranks and needs parallel.pp > 1")
