"""Pipeline-parallel training with megatron-core's schedules: any TP x PP x DP layout, microbatches.

One training step of one data-parallel rank's batch runs through megatron-core's
``get_forward_backward_func()``: no pipelining (pp = 1; plain gradient accumulation), 1F1B
(pp > 1), or interleaved 1F1B (``vpp`` > 1 model chunks per rank). Every layout takes this one
path, so microbatching and loss accounting are the same code for all.

What crosses a pipeline boundary. The previous pipeline rank's :class:`Streams` packed into ONE
``[s, b, h]`` tensor (megatron's p2p moves one tensor of a known shape): video tokens
(F * P), action tokens (T), caption states (L), the state token and the two timestep
embeddings (3), s = F * P + T + L + 3. With ``model.video_tower=wan`` the two towers have
different widths: the message is ``[n, b, Wan width]``, the Wan streams per view followed by
the action streams flattened per sample and cut into Wan-width positions
(``model/wan_wallwm.py``), and the pipeline config's hidden size is the Wan width.

- The conditioning (caption states, state token, timestep embeddings) is *passed*, not
  recomputed. Recomputing it on every pipeline rank would replicate the caption encoder, state and
  timestep embedders on each pipeline rank, run them once per microbatch per pipeline rank, and need an
  all-reduce of their gradients across pipeline ranks (as megatron does for tied embeddings); passing
  costs L + 3 extra positions per message (about a tenth of the smoke model's 432 tower
  tokens, a few percent at real video lengths) and the gradients of the conditioners flow
  back through the ordinary backward p2p.
- The masks are *recomputed* on every pipeline rank from the batch's lengths and caption padding,
  integers each pipeline rank reads anyway; sending them would cost h floats per position.
- Shapes. A step's microbatches are equal row slices of one padded batch, so all of them have
  the same [s, b, h], and the schedule is called with that step's s. Steps differ in shape
  (length buckets), but each step is its own schedule call. Hence no per-message shape
  exchange (megatron's ``variable_seq_lengths``, a small extra p2p before every transfer).
  Trade-off: microbatches of one step cannot have different lengths; the loader's length
  buckets keep the padding this costs small.
- The boundary tensor is fp32 even under bf16 autocast: the pipeline boundary then adds no
  rounding that the unsplit model does not have; bf16 would halve the bytes.

Loss accounting. Every microbatch's losses divide by the element counts of the whole step
(all microbatches, summed over data-parallel ranks: one all-reduce of two numbers), so the
shares of all microbatches and ranks add up to the global-batch loss, and so do the gradients
(DDP sums, megatron's ``calculate_per_token_loss``). The loss function returns megatron's
3-tuple, so the schedule does not divide by the number of microbatches again. The step's loss
values are summed on the last pipeline rank and all-reduced over the pipeline and data-parallel
groups: every rank reports the same global-batch losses.

Gradient accumulation: DDP accumulates each microbatch's gradients into its buffers;
``config.no_sync_func`` holds the data-parallel reduction back until the last microbatch when
it overlaps backward (GPU), otherwise the optimizer's ``finish_grad_sync`` reduces once.
On CPU, megatron's batched p2p (which calls ``torch.cuda.synchronize()``) is switched off
(``cpu_patches.pipeline_config_overrides``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.transformer_config import TransformerConfig

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.batch import Batch
from wallwm_pretrain.model import TrainableModel, boundary_width, build_model
from wallwm_pretrain.model.flow_matching import FlowNoise
from wallwm_pretrain.model.spec import build_transformer_config
from wallwm_pretrain.parallel.cpu_patches import pipeline_config_overrides
from wallwm_pretrain.parallel.pipeline_chunk import MicroBatch, PipelineChunk
from wallwm_pretrain.parallel.pipeline_split import pipeline_slices
from wallwm_pretrain.parallel.state import ParallelContext

PIPELINE_DTYPE = torch.float32


def build_pipeline_chunks(cfg: ModelConfig, ctx: ParallelContext, seed: int) -> list[TrainableModel]:
    """This rank's model chunks (one per virtual chunk it holds), on ``ctx.device``, built from
    megatron-core's layers over ``ctx.pg_collection``.

    Each chunk is built after ``torch.manual_seed(seed)``, so its weights are exactly those of
    the same layers in a single-process model built after the same seed (see ``model/pipeline_slice.py``).
    """
    chunks = []
    for spec in pipeline_slices(cfg.num_layers, ctx.pp, ctx.vpp, ctx.pp_rank):
        torch.manual_seed(seed)
        chunks.append(build_model(cfg, spec, pg_collection=ctx.pg_collection).to(ctx.device))
    # leave the global RNG alike on all ranks, whatever number of chunks each built
    torch.manual_seed(seed)
    return chunks


def pipeline_config(cfg: ModelConfig, ctx: ParallelContext) -> TransformerConfig:
    """The megatron config the schedule and the DDP wrappers read (not the layers' own)."""
    return dataclasses.replace(
        build_transformer_config(cfg),
        hidden_size=boundary_width(cfg),  # the Wan path's boundary is [n, B, Wan width] (model/wan_wallwm.py)
        pipeline_model_parallel_size=ctx.pp,
        virtual_pipeline_model_parallel_size=ctx.vpp if ctx.vpp > 1 else None,
        # megatron's default (pp): microbatches go through a virtual chunk in groups of pp
        microbatch_group_size_per_vp_stage=ctx.pp,
        pipeline_dtype=PIPELINE_DTYPE,
        # DDP sums over data-parallel ranks and the schedule does not divide by microbatches:
        # the loss shares are already fractions of the global-batch loss
        calculate_per_token_loss=True,
        **pipeline_config_overrides(ctx.device.type),
    )


def parallelize_chunks(
    chunks: list[TrainableModel],
    ctx: ParallelContext,
    overlap_grad_reduce: bool | None = None,
    bucket_size: int | None = None,
) -> list[DistributedDataParallel]:
    """``DistributedDataParallel(PipelineChunk(chunk))`` for each chunk, sharing one pipeline config.

    Args:
        chunks: from :func:`build_pipeline_chunks`.
        ctx: from :func:`init_parallel`.
        overlap_grad_reduce: all-reduce buckets while backward runs; default on for CUDA.
        bucket_size: elements per bucket when overlapping (megatron's default when None).
    """
    if overlap_grad_reduce is None:
        overlap_grad_reduce = ctx.device.type == "cuda"
    config = pipeline_config(chunks[0].cfg, ctx)
    wrapped = []
    for i, chunk in enumerate(chunks):
        ddp_config = DistributedDataParallelConfig(  # DDP edits its config: one per chunk
            overlap_grad_reduce=overlap_grad_reduce,
            use_distributed_optimizer=False,
            bucket_size=bucket_size,
            average_in_collective=False,
        )
        # later chunks' reductions are off the critical path: one bucket (megatron's choice)
        ddp = DistributedDataParallel(config, ddp_config, PipelineChunk(chunk, PIPELINE_DTYPE), disable_bucketing=i > 0)
        ddp.broadcast_params()
        wrapped.append(ddp)
    if overlap_grad_reduce:
        no_sync = [m.no_sync for m in wrapped]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    return wrapped


def split_microbatches(batch: Batch, noise: FlowNoise, microbatches: int) -> list[MicroBatch]:
    """``microbatches`` equal row slices of a batch and its noise.

    Raises:
        ValueError: the batch does not split evenly.
    """
    b = batch.size
    if b % microbatches:
        raise ValueError(
            f"a batch of {b} rows does not split into {microbatches} equal microbatches "
            f"({b} = {b // microbatches} * {microbatches} + {b % microbatches})"
        )
    m = b // microbatches
    return [MicroBatch(batch.rows(i, i + m), noise.rows(i, i + m)) for i in range(0, b, m)]


def boundary_seq_length(model: TrainableModel, batch: Batch) -> int:
    """Positions of the packed pipeline-boundary tensor, as the model says (small video tower:
    F * P + T + L + 3; the Wan model's in ``model/wan_wallwm.py``)."""
    return model.boundary_seq_length(batch)


class PipelineSchedule:
    """Forward and backward of one step's batch over this rank's chunks, in microbatches.

    Args:
        chunks: from :func:`parallelize_chunks` (this rank's chunks, in model order).
        ctx: from :func:`init_parallel`.
        microbatches: microbatches per step (the batch's rows must split evenly).
        autocast: context manager factory entered around each microbatch's forward.
    """

    def __init__(self, chunks: list[DistributedDataParallel], ctx: ParallelContext, microbatches: int,
                 autocast=contextlib.nullcontext) -> None:
        if ctx.vpp > 1 and microbatches % ctx.pp:
            raise ValueError(
                f"microbatches={microbatches} must be a multiple of pp={ctx.pp} for the interleaved schedule "
                f"(vpp={ctx.vpp})"
            )
        self.chunks, self.ctx, self.microbatches, self.autocast = chunks, ctx, microbatches, autocast
        self.bare = [c.module.model for c in chunks]
        self.holds_head = any(m.pipeline_slice.head for m in self.bare)
        self.loss_keys = self.bare[-1].loss_keys
        self.forward_backward = get_forward_backward_func()

    def _denominators(self, batch: Batch) -> torch.Tensor | None:
        """Element counts of the global batch (this step, all data-parallel ranks)."""
        if not self.holds_head:
            return None  # only the last pipeline rank computes losses; its DP peers are last pipeline ranks too
        counts = self.bare[-1].loss_counts(batch).to(batch.lengths.device)
        if self.ctx.dp > 1:  # not over context-parallel ranks: they count the same samples
            dist.all_reduce(counts, group=ps.get_data_parallel_group())
        return counts

    def _forward_step(self, denominators, data_iterator, model):
        micro = next(data_iterator)
        with self.autocast():
            out = model(micro, denominators)
        tokens = micro.batch.lengths.sum().to(torch.int)
        return out, partial(self._loss, tokens)

    def _loss(self, tokens: torch.Tensor, out: dict[str, torch.Tensor]):
        # 3-tuple: with calculate_per_token_loss the schedule leaves the share as it is
        return out["loss"], tokens, {k: out[k].detach() for k in self.loss_keys}

    def run(self, batch: Batch, noise: FlowNoise) -> dict[str, torch.Tensor]:
        """Forward and backward of this rank's batch; gradients accumulate in DDP's buffers.

        ``batch.remaining`` (control steps to each sample's event end) trains the
        remaining-time head; None leaves it out.

        Returns:
            the model's ``loss_keys`` (towers: ``loss``, ``loss_video``, ``loss_action``,
            ``loss_time``): global-batch values (fp32 scalars), the same on every rank.
        """
        micro = split_microbatches(batch, noise, self.microbatches)
        lengths = batch.lengths
        denominators = self._denominators(batch)
        iterators = [iter(micro) for _ in self.chunks]
        stored = self.forward_backward(
            forward_step_func=partial(self._forward_step, denominators),
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=self.microbatches,
            # megatron divides the sequence by cp for its p2p shapes; the model's is this rank's piece
            seq_length=boundary_seq_length(self.bare[0], batch) * self.ctx.cp,
            micro_batch_size=micro[0].batch.size,
            forward_only=False,
        )
        total = torch.zeros(len(self.loss_keys), dtype=torch.float32, device=lengths.device)
        for values in stored:  # on the last pipeline rank only
            total += torch.stack([values[k].float() for k in self.loss_keys])
        if self.ctx.pp > 1:
            dist.all_reduce(total, group=ps.get_pipeline_model_parallel_group())
        if self.ctx.dp * self.ctx.cp > 1:
            # context-parallel ranks hold shares of the same samples' losses: they add up too
            dist.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=self.ctx.cp > 1))
        return dict(zip(self.loss_keys, total.unbind()))
