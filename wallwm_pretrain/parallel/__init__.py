"""All parallel wiring: process groups, megatron-core state, CPU patches."""

from wallwm_pretrain.parallel.cpu_patches import apply_cpu_patches
from wallwm_pretrain.parallel.state import ParallelContext, init_parallel, shutdown_parallel

__all__ = ["ParallelContext", "apply_cpu_patches", "init_parallel", "shutdown_parallel"]
