"""One model chunk as megatron-core's pipeline schedules expect it.

The schedules hand each pipeline rank the tensor received from the previous pipeline rank through
``set_input_tensor`` (looked up through the DDP wrapper) before calling the forward-step
function, and read ``model_type``. :class:`PipelineChunk` keeps that tensor and passes it to
the model's forward as ``hidden``; the model itself knows nothing of schedules or groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.enums import ModelType
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.model import TrainableModel
from wallwm_pretrain.model.flow_matching import FlowNoise


@dataclass
class MicroBatch:
    """Rows of one data-parallel rank's batch, with their flow noise."""

    batch: Batch
    noise: FlowNoise


class PipelineChunk(nn.Module):
    """A model chunk ( a :class:`~wallwm_pretrain.model.TrainableModel`) with megatron's pipeline-schedule interface.

    Its ``state_dict`` / ``load_state_dict`` are the wrapped model's own (no prefix), so the
    names are the whole model's.

    Args:
        model: the chunk.
        pipeline_dtype: dtype of the tensor sent to the next pipeline rank (what the receiver allocates).
    """

    model_type = ModelType.encoder_or_decoder

    def __init__(self, model: TrainableModel, pipeline_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.pipeline_dtype = pipeline_dtype
        self.input_tensor: torch.Tensor | None = None

    def set_input_tensor(self, input_tensor) -> None:
        """Called by the schedule before each forward (a one-element list; None on the first pipeline rank)."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0] if input_tensor else None
        self.input_tensor = input_tensor

    def forward(self, micro: MicroBatch, loss_denominators: torch.Tensor | None = None):
        out = self.model(
            micro.batch, noise=micro.noise, loss_denominators=loss_denominators, hidden=self.input_tensor
        )
        if isinstance(out, torch.Tensor):
            # the receiver allocates pipeline_dtype; under autocast the packed streams may mix dtypes
            out = out.to(self.pipeline_dtype)
        return out

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
