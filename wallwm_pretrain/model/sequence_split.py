"""Context parallelism: each sample's token sequence split over the context-parallel (CP) ranks.

Where the split happens. The towers embed their inputs whole on every CP rank (the inputs are
raw latents and actions, small next to the layers' activations), then :meth:`SequenceSplit.shard`
keeps this rank's contiguous piece of the video tokens and of the action tokens: a sequence of
``n`` tokens is padded at its end to ``n_pad = cp * ceil(n / cp)`` and rank ``r`` keeps tokens
``[r n_pad / cp, (r + 1) n_pad / cp)``. The padding tokens are padding keys (the key-padding
masks every attention reads are of the whole padded sequence, :meth:`SequenceSplit.pad_valid`)
and carry no loss, so uneven lengths need no special case. (One difference in a case the towers
never meet: a sample with no real key at all attends uniformly to every key, as megatron's core
does, and under a split "every key" includes the padding ones. A tower sample always has its
anchor frame and at least one control step.) Every layer then runs on the piece;
only the attentions that read the split sequence exchange data, the rest (norms, FFNs, AdaLN,
heads) is per token. Conditioning that is not split (caption states, the state token, timestep
embeddings) is computed whole on every CP rank.

Where the exchange sits: in the attention core (``attention_core.py``), Ulysses style. Before
the core, an all-to-all turns ``[n_pad / cp, b, heads, d]`` (all heads of this rank's tokens)
into ``[n_pad, b, heads / cp, d]`` (all tokens of this rank's heads); the core runs on whole
sequences; a second all-to-all turns the output back. :class:`_SequenceToHeads` and
:class:`_HeadsToSequence` are each other's inverse and each other's backward.

Losses. A CP rank's loss is the squared error of its tokens over the global element counts, so
the CP ranks' losses (and gradients) add up to the whole sample's; a per-sample term that every
CP rank computes whole (the remaining-time head) is divided by cp. Gradients are summed over
DP x CP (megatron's data-parallel-with-context group, in DDP), the losses' values too.

The model never creates or looks up a group: the CP group arrives in megatron's
``ProcessGroupCollection`` (``pg_collection.cp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Chunk ``i`` of dim 0 goes to rank ``i``; chunk ``i`` of the result came from rank ``i``.

    torch's ``all_to_all_single`` runs on gloo (CPU) and NCCL alike, so one code path serves both.
    """
    x = x.contiguous()
    out = torch.empty_like(x)  # after contiguous(): empty_like keeps a permuted input's strides
    dist.all_to_all_single(out, x, group=group)
    return out


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``[s, b, heads, d]`` (this rank's tokens, all heads) -> ``[cp * s, b, heads / cp, d]``
    (every rank's tokens in rank order, this rank's block of heads). No autograd."""
    cp = group.size()
    s, b, heads, d = x.shape
    chunks = x.view(s, b, cp, heads // cp, d).permute(2, 0, 1, 3, 4)  # [cp (head block), s, b, h/cp, d]
    return _all_to_all(chunks, group).reshape(cp * s, b, heads // cp, d)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of :func:`sequence_to_heads`: ``[cp * s, b, h, d]`` -> ``[s, b, cp * h, d]``."""
    cp = group.size()
    n, b, heads, d = x.shape
    s = n // cp
    back = _all_to_all(x.view(cp, s, b, heads, d), group)  # [cp (head block), s, b, h, d]
    return back.permute(1, 2, 0, 3, 4).reshape(s, b, cp * heads, d)


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return heads_to_sequence(grad, ctx.group), None


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return sequence_to_heads(grad, ctx.group), None


@dataclass(frozen=True)
class SequenceSplit:
    """This rank's place in the context-parallel group and the split of a sequence over it."""

    group: dist.ProcessGroup
    size: int
    rank: int

    @classmethod
    def of(cls, pg_collection) -> "SequenceSplit | None":
        """The split of megatron's CP group in ``pg_collection``; None without one or at cp = 1."""
        group = None if pg_collection is None else getattr(pg_collection, "cp", None)
        if group is None or group.size() == 1:
            return None
        return cls(group, group.size(), group.rank())

    # ------------------------------------------------------------------ lengths
    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of cp."""
        return -(-n // self.size) * self.size

    def local(self, n: int) -> int:
        """Tokens per rank of a sequence of ``n``."""
        return self.padded(n) // self.size

    # ------------------------------------------------------------------ pieces
    def pad(self, x: torch.Tensor, dim: int, value=0) -> torch.Tensor:
        """``x`` padded at the end of ``dim`` to a multiple of cp."""
        n = x.shape[dim]
        extra = self.padded(n) - n
        if not extra:
            return x
        shape = list(x.shape)
        shape[dim] = extra
        return torch.cat([x, x.new_full(shape, value)], dim=dim)

    def shard(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's piece of ``x`` along ``dim`` (padded first), a tensor of its own (the
        whole one is not kept alive by a view)."""
        padded = self.pad(x, dim)
        n = padded.shape[dim] // self.size
        return padded.narrow(dim, self.rank * n, n).clone()

    def pad_valid(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` real tokens -> ``[B, n_pad]``: the padding tokens are not real."""
        return self.pad(valid, 1, False)

    def shard_valid(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` real tokens -> this rank's ``[B, n_pad / cp]``."""
        return self.shard(valid, 1)

    # ------------------------------------------------------------------ the exchange
    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[s, b, heads, d]`` -> ``[cp s, b, heads / cp, d]`` (all-to-all; backward: the inverse)."""
        heads = x.shape[2]
        if heads % self.size:
            raise ValueError(f"{heads} heads on this rank do not split over context-parallel size {self.size}")
        return _SequenceToHeads.apply(x, self.group)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_heads` (all-to-all; backward: :meth:`to_heads`)."""
        return _HeadsToSequence.apply(x, self.group)
