"""The only place where megatron-core is adapted to run on CPU (gloo).

megatron-core assumes CUDA in a handful of spots that are otherwise device-agnostic. A process
that runs on CPU (no CUDA, or ``train.device=cpu`` on a GPU machine) gets exactly these patched;
a process that runs on CUDA gets nothing patched:

1. ``torch.cuda.current_device()`` is used as the device of scratch buffers (e.g. the global
   memory buffer of ``DotProductAttention``, p2p shape tensors); on CPU it returns ``cpu``.
2. The CUDA RNG tracker (``model_parallel_cuda_manual_seed`` / ``get_cuda_rng_tracker().fork()``)
   keeps named CUDA generator states; on CPU an equivalent tracker keeps named CPU states.
3. ``get_default_causal_mask`` builds its mask with ``device="cuda"``.
4. The pipeline schedules allocate a token counter with ``torch.zeros(..., device="cuda")``.
5. Not a patch but a setting: the schedules' *batched* p2p ends in ``torch.cuda.synchronize()``,
   so on CPU :func:`pipeline_config_overrides` turns ``batch_p2p_comm`` off (individual
   isend/irecv, which megatron also supports).

Each patch checks that its target still exists with the shape it expects and raises
:class:`MegatronPatchError` otherwise, so an upgrade of megatron-core that moves these things
fails loudly (tests/parallel/test_cpu_patches.py) instead of silently running unpatched.
"""

from __future__ import annotations

import contextlib
import inspect
import types

import torch

_APPLIED = False


class MegatronPatchError(RuntimeError):
    """megatron-core changed under a CPU patch; the patch needs a look."""


class CpuRNGStatesTracker:
    """Named CPU generator states with the interface of megatron's ``CudaRNGStatesTracker``.

    ``fork(name)`` swaps the default CPU generator to the named state and back, so dropout
    inside tensor-parallel regions draws from a per-TP-rank stream, as it would on GPU.
    """

    def __init__(self) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _require(module: types.ModuleType, name: str) -> object:
    # a probe of megatron-core's API (the patched functions), not of the model's capabilities
    if not hasattr(module, name):
        raise MegatronPatchError(
            f"{module.__name__}.{name} no longer exists; megatron-core changed and "
            f"wallwm_pretrain/parallel/cpu_patches.py must be updated"
        )
    return getattr(module, name)


def _require_source(obj: object, needle: str) -> None:
    source = inspect.getsource(obj)
    if needle not in source:
        raise MegatronPatchError(
            f"{obj.__module__}.{obj.__qualname__} no longer contains {needle!r}; the CPU patch "
            f"for it in wallwm_pretrain/parallel/cpu_patches.py may be stale"
        )


class _CpuZerosTorch(types.ModuleType):
    """A view of ``torch`` whose ``zeros`` maps ``device="cuda"`` to CPU (for schedules.py)."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq), diagonal=1).bool()


def apply_cpu_patches() -> bool:
    """Patch megatron-core for a process that runs on CPU. Idempotent.

    Called by ``init_parallel`` when the chosen device is the CPU, also where CUDA is available
    (``train.device=cpu``): megatron-core would otherwise put its scratch buffers, RNG streams
    and causal masks on the GPU next to a CPU model. The process must not use CUDA afterwards.

    Returns:
        True: the patches are (now) active.
    """
    global _APPLIED
    if _APPLIED:
        return True

    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mp_random
    from megatron.core.transformer import utils as tf_utils

    # 1. scratch-buffer device
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]

    # 2. RNG tracker: install a CPU tracker and mark it initialised so that
    # initialize_rng_tracker() keeps it; model_parallel_cuda_manual_seed then fills it.
    _require(mp_random, "_CUDA_RNG_STATE_TRACKER")
    _require(mp_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED")
    _require_source(mp_random.initialize_rng_tracker, "_CUDA_RNG_STATE_TRACKER_INITIALIZED")
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    # 3. causal mask, looked up by name from transformer.utils at call time
    _require_source(_require(tf_utils, "get_default_causal_mask"), 'device="cuda"')
    tf_utils.get_default_causal_mask = _cpu_causal_mask

    # 4. the schedules' token counter
    _require_source(schedules, 'torch.zeros([], dtype=torch.int, device="cuda")')
    schedules.torch = _CpuZerosTorch()

    _APPLIED = True
    return True


def patches_active() -> bool:
    return _APPLIED


def pipeline_config_overrides(device_type: str) -> dict:
    """megatron config fields the pipeline schedules need on ``device_type`` (5. above)."""
    return {} if device_type == "cuda" else {"batch_p2p_comm": False}
