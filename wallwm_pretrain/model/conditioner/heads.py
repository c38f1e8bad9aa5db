"""The conditioner's trained heads, all reading the frozen VLM's states through one adapter.

* :class:`Adapter`: VLM states ``[B, L, D_vlm]`` -> ``[B, L, d]`` (LayerNorm + linear), the
  memory every head cross-attends to or pools.
* :class:`AlignmentHead` (project-out): ``align_tokens`` learned position queries attend to the
  memory (torch's ``nn.TransformerDecoder`` without a causal mask) and are projected to the
  text encoder's width: position i is trained against the i-th state of the frozen text
  encoder on the next event's caption zero-padded as Wan pads it (MSE over all ``align_tokens``
  positions: the caption's real ones, then zeros), so the video tower can read these states where
  it reads the text encoder's, and every position it reads was trained.
* :class:`NextEventHead`: a small causal decoder (``nn.TransformerDecoder``) that writes the
  next event's caption in the VLM's own tokens, cross-attending to the memory. Its token
  embeddings and output layer are the frozen VLM's (input embedding table and LM head), reached
  through trained ``D_vlm <-> d`` projections: the head speaks every word the VLM knows with a
  few million trained parameters instead of a vocabulary-sized table of its own (Qwen3.5's
  vocabulary is 248k tokens). Why a decoder and not the VLM's own generation: the backbone
  stays frozen, and a caption decoder is the smallest thing that turns its states into text.
* :class:`TimeHead`: the memory's masked mean and the state token -> latent frames left in the
  event in progress (Huber, as the towers' remaining-time head).

Written with torch's transformer layers (not megatron's): the heads are small, replicated on
every data-parallel rank, and never split (``model.kind=conditioner`` trains data parallel).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from wallwm_pretrain.model.embeddings import mark_adamw


def _decoder(d: int, heads: int, layers: int) -> nn.TransformerDecoder:
    # no biases: an attention key bias adds the same score to every key of a query, so softmax
    # ignores it and its gradient is zero up to rounding, which Adam would blow up into steps
    layer = nn.TransformerDecoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True, bias=False)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d, bias=False))


class Adapter(nn.Module):
    """Frozen VLM states -> the heads' width."""

    def __init__(self, vlm_dim: int, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(vlm_dim)
        self.proj = nn.Linear(vlm_dim, d)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(states))


class AlignmentHead(nn.Module):
    """Memory -> ``[B, align_tokens, text_dim]`` states in the text encoder's space."""

    def __init__(self, d: int, heads: int, layers: int, positions: int, text_dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(positions, d) * 0.02)
        self.queries.use_adamw = True  # a table of position vectors, not a linear map
        self.decoder = _decoder(d, heads, layers)
        self.out = mark_adamw(nn.Linear(d, text_dim))

    @property
    def positions(self) -> int:
        return self.queries.shape[0]

    def forward(self, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return self.out(self.decoder(q, memory, memory_key_padding_mask=memory_pad))


def alignment_sse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Summed squared error of every predicted position against the target as Wan reads it: the
    caption's real text-encoder positions, then zeros (``model/wan/text.py``). All
    ``align_tokens`` positions are trained, so every position the head hands a tower was trained
    (on the padding positions, to be Wan's zero padding); what sits in the target's padding never
    counts, and real positions past ``pred``'s length are cut."""
    n = min(pred.shape[1], target.shape[1])
    real = target[:, :n].float() * valid[:, :n].unsqueeze(-1).to(torch.float32)
    padded = torch.nn.functional.pad(real, (0, 0, 0, pred.shape[1] - n))
    return ((pred.float() - padded) ** 2).sum()


def alignment_elements(valid: torch.Tensor, positions: int, text_dim: int) -> torch.Tensor:
    """Elements :func:`alignment_sse` sums: every position of every row."""
    return torch.tensor(float(valid.shape[0] * positions * text_dim), device=valid.device)


class NextEventHead(nn.Module):
    """Teacher-forced caption logits over the VLM's vocabulary, and greedy generation."""

    def __init__(self, d: int, heads: int, layers: int, max_tokens: int, vlm_dim: int) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.token_in = nn.Linear(vlm_dim, d, bias=False)
        self.start = nn.Parameter(torch.randn(d) * 0.02)  # the "begin caption" input
        self.pos = mark_adamw(nn.Embedding(max_tokens, d))
        self.decoder = _decoder(d, heads, layers)
        self.token_out = mark_adamw(nn.Linear(d, vlm_dim, bias=False))

    def _inputs(self, ids: torch.Tensor, embed_table: torch.Tensor) -> torch.Tensor:
        """[start, tok_1 .. tok_{n-1}] embedded, with positions: [B, n, d]."""
        prev = self.token_in(F.embedding(ids[:, :-1], embed_table).to(self.token_in.weight.dtype))
        start = self.start.to(prev.dtype).expand(ids.shape[0], 1, -1)
        x = torch.cat([start, prev], dim=1)
        return x + self.pos.weight[: x.shape[1]].to(x.dtype)

    def _logits(self, h: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        return self.token_out(h) @ lm_head.to(h.dtype).t()

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor,
                embed_table: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n, vocab]`` for target tokens ``ids`` ``[B, n]`` (position i predicts ids[:, i])."""
        x = self._inputs(ids, embed_table)
        n = x.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(n, device=x.device, dtype=x.dtype)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_pad)
        return self._logits(h, lm_head)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_pad: torch.Tensor, embed_table: torch.Tensor,
                 lm_head: torch.Tensor, eos_id: int) -> torch.Tensor:
        """Greedy tokens ``[B, n <= max_tokens]``; each row ends at its first ``eos_id`` (rows that
        ended earlier are filled with ``eos_id``)."""
        b = memory.shape[0]
        ids = torch.full((b, 1), eos_id, dtype=torch.long, device=memory.device)  # placeholder tail
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        for _ in range(self.max_tokens):
            logits = self.forward(ids, memory, memory_pad, embed_table, lm_head)[:, -1]
            nxt = torch.where(done, torch.full_like(done, eos_id, dtype=torch.long), logits.argmax(-1))
            ids = torch.cat([ids[:, :-1], nxt[:, None], ids[:, -1:]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return ids[:, :-1]


def caption_ce_sum(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy over the caption's real tokens (padding never counts)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none")
    return (ce * valid.flatten().to(ce.dtype)).sum()


class TimeHead(nn.Module):
    """(memory, state token) -> latent frames left in the event in progress ``[B]``."""

    def __init__(self, d: int, state_dim: int) -> None:
        super().__init__()
        self.state_in = mark_adamw(nn.Linear(state_dim, d))
        self.norm = nn.LayerNorm(2 * d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), mark_adamw(nn.Linear(d, 1)))

    def forward(self, memory: torch.Tensor, memory_valid: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        w = memory_valid.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * w).sum(1) / w.sum(1).clamp_min(1.0)
        x = torch.cat([pooled, self.state_in(state.to(memory.dtype))], dim=-1)
        return self.mlp(self.norm(x)).squeeze(-1)
