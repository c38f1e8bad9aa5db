"""Model chunks as the parallel wrappers hold them.

The trainer's chunks are megatron DDP around a :class:`~.pipeline_chunk.PipelineChunk` around the
model chunk (see :mod:`.pipeline`); checkpoints, the optimizer and parameter counts need the
bare chunk, whose parameter names are the whole model's.
"""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel
from torch import nn

from wallwm_pretrain.parallel.pipeline_chunk import PipelineChunk


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model chunk inside one chunk of :func:`~.pipeline.parallelize_chunks`, or the
    model itself."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, PipelineChunk):
        model = model.model
    return model


def as_chunks(model: nn.Module | list[nn.Module]) -> list[nn.Module]:
    """A model or a list of model chunks, as a list."""
    return list(model) if isinstance(model, (list, tuple)) else [model]
