"""Which coupled layers each pipeline rank holds: the pipeline split, decided here, not in the model.

The ``pp * vpp`` virtual chunks each take ``num_layers / (pp * vpp)`` consecutive coupled layers.
Pipeline rank r holds the virtual chunks r, r + pp, r + 2 pp, ... (megatron-core's interleaved
layout: its model chunk k is virtual chunk k * pp + r). Virtual stage 0 also holds the input
side, the last virtual chunk the output side and the losses.

Trade-off: an even split of whole coupled layers only. The first and last pipeline ranks carry extra
work (caption encoder and embeddings; heads and losses) that an uneven split could offset; at
the sizes where pipelining matters, the towers' layers dominate both by far.
"""

from __future__ import annotations

from wallwm_pretrain.model.pipeline_slice import PipelineSlice


def validate_pipeline_split(num_layers: int, pp: int, vpp: int) -> None:
    """Raise ValueError unless ``num_layers`` splits evenly into ``pp * vpp`` virtual chunks."""
    chunks = pp * vpp
    if num_layers % chunks:
        raise ValueError(
            f"num_layers={num_layers} does not split into pp * vpp = {pp} * {vpp} = {chunks} chunks "
            f"of whole coupled layers ({num_layers} = {num_layers // chunks} * {chunks} + {num_layers % chunks})"
        )


def pipeline_slices(num_layers: int, pp: int, vpp: int, pp_rank: int) -> list[PipelineSlice]:
    """The model chunks of pipeline rank ``pp_rank``, in chunk (= model) order.

    Raises:
        ValueError: the layers do not split evenly, or ``pp_rank`` is not in ``[0, pp)``.
    """
    validate_pipeline_split(num_layers, pp, vpp)
    if not 0 <= pp_rank < pp:
        raise ValueError(f"pp_rank={pp_rank} is not a rank of a pipeline of {pp} ranks")
    chunks = pp * vpp
    per = num_layers // chunks
    specs = []
    for chunk in range(vpp):
        virtual = chunk * pp + pp_rank
        specs.append(PipelineSlice(virtual * per, per, embed=virtual == 0, head=virtual == chunks - 1))
    return specs


def virtual_chunk(pp: int, pp_rank: int, chunk: int) -> int:
    """The virtual chunk index of chunk ``chunk`` on pipeline rank ``pp_rank``."""
    return chunk * pp + pp_rank
