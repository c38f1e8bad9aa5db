"""Staircase decoding: K_c reasoning latents from a mixture-of-transformers branch beside the
frozen VLM, with a relay between the lower and the upper layers.

Why a branch with its own weights per layer, not the VLM's own layers and KV cache: Qwen3.5's
text model is hybrid (gated delta net linear-attention layers between full-attention layers), and
a linear-attention layer has no per-token keys and values that latents appended after the
context could attend to, only a recurrent state; reusing the VLM's cache per layer would work for
Qwen3-VL and Qwen2.5-VL and not for Qwen3.5. So, mixture-of-transformers style, the latent
positions get weights of their own and the context stays the VLM's:

* The VLM runs once, frozen, over (camera views, prompt); :meth:`FrozenVLM.layer_states` gives
  the input of each of its N decoder layers over the context tokens.
* Branch layer j (``N / layer_group`` of them) pairs with VLM layer ``j * layer_group``. Its
  latent queries attend to that layer's context states (keys and values through the branch's
  own projections, computed once per context: the context cache) and causally to the latents
  before them and themselves (the latent cache), then the branch's own SwiGLU FFN; pre-norm
  residual, RMSNorm, as Qwen's layers.
* The relay: branch layers j < N_r (``relay_depth``) run for latent 1 only, starting from a
  learned vector. Latent 1's state after layer N_r - 1 is the relay r. Latents 2..K_c never run
  the lower layers: they start at layer N_r from r + p_k (a learned per-position embedding);
  latent 1 continues from r. The upper layers j >= N_r run all K_c latents in one parallel
  forward with a causal mask among them; :meth:`StaircaseBranch.decode` runs them one latent at a
  time with the caches and gives the same latents (up to float rounding).
* No rotary positions among the latents: their order is carried by the causal mask and p_k, and
  the context's own M-RoPE positions are already inside the VLM states the branch reads.

The output z [B, K_c, D] (after a final RMSNorm) is what ``small_lm.PrefixProjector`` maps to the
frozen small LM's soft prefix. Written with plain torch layers: the branch is small, replicated
on every data-parallel rank and never split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConditionerError


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class BranchLayer(nn.Module):
    """One branch layer: latent queries over (context at its VLM layer, earlier latents), then FFN."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        if d % heads:
            raise ConditionerError(f"model.staircase.num_heads ({heads}) must divide the VLM's "
                                   f"hidden size ({d})")
        self.heads = heads
        self.norm = nn.RMSNorm(d)
        self.context_norm = nn.RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.context_kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.ffn_norm = nn.RMSNorm(d)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def context(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context's keys and values [B, H, L, d/H] from the VLM layer's input states [B, L, D]."""
        k, v = self.context_kv(self.context_norm(states)).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor], valid: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``x`` [B, n, D]: n new latents after the ``past`` ones (keys, values [B, H, P, d/H]).

        Returns the new states [B, n, D] and the latent keys and values of all P + n latents."""
        b, n, _ = x.shape
        h = self.norm(x)
        q = _heads(self.q(h), self.heads)
        k, v = (_heads(t, self.heads) for t in self.kv(h).chunk(2, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = k.shape[2] - n
        causal = torch.arange(p + n, device=x.device)[None, :] <= (p + torch.arange(n, device=x.device))[:, None]
        mask = torch.cat([valid[:, None, None, :].expand(b, 1, n, valid.shape[1]),
                          causal[None, None].expand(b, 1, n, p + n)], dim=-1)
        a = F.scaled_dot_product_attention(q, torch.cat([context[0], k], dim=2),
                                           torch.cat([context[1], v], dim=2), attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, -1))
        gate, up = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up), (k, v)


@dataclass
class StaircaseCache:
    """Per branch layer: the context's keys and values (computed once per context) and the
    latent keys and values so far (upper layers only; latent 1 alone runs the lower layers)."""
    context: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor
    latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def length(self, layer: int) -> int:
        """Latents already in the cache of branch layer ``layer``."""
        kv = self.latents.get(layer)
        return 0 if kv is None else kv[0].shape[2]


class StaircaseBranch(nn.Module):
    """The trained branch of Staircase decoding (module docstring). ``cfg``: ``StaircaseConfig``."""

    def __init__(self, vlm_layers: int, hidden_size: int, cfg) -> None:
        super().__init__()
        if vlm_layers % cfg.layer_group:
            raise ConditionerError(f"model.staircase.layer_group ({cfg.layer_group}) must divide the "
                                   f"VLM's {vlm_layers} text layers")
        n = vlm_layers // cfg.layer_group
        if not cfg.relay_depth < n:
            raise ConditionerError(f"model.staircase.relay_depth ({cfg.relay_depth}) must be below the "
                                   f"branch's {n} layers (VLM layers / layer_group), leaving upper layers")
        self.latents = cfg.latents
        self.relay_depth = cfg.relay_depth
        self.layer_group = cfg.layer_group
        self.start = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.start.use_adamw = True  # a learned input vector, not a linear map
        self.positions = nn.Parameter(torch.randn(cfg.latents - 1, hidden_size) * 0.02)
        self.positions.use_adamw = True
        self.layers = nn.ModuleList(BranchLayer(hidden_size, cfg.num_heads, cfg.ffn_mult * hidden_size)
                                    for _ in range(n))
        self.norm = nn.RMSNorm(hidden_size)

    @property
    def lower(self) -> range:
        """Branch layers that run for latent 1 only."""
        return range(self.relay_depth)

    @property
    def upper(self) -> range:
        """Branch layers that run for all K_c latents."""
        return range(self.relay_depth, len(self.layers))

    def prepare(self, layer_states: torch.Tensor, valid: torch.Tensor) -> StaircaseCache:
        """The context cache from :meth:`FrozenVLM.layer_states` ([N, B, L, D], [B, L])."""
        if layer_states.shape[0] != len(self.layers) * self.layer_group:
            raise ConditionerError(f"staircase: {layer_states.shape[0]} VLM layer states for a branch "
                                   f"of {len(self.layers)} layers x layer_group {self.layer_group}")
        ctx = [layer.context(layer_states[j * self.layer_group]) for j, layer in enumerate(self.layers)]
        return StaircaseCache(ctx, valid)

    def relay(self, cache: StaircaseCache) -> torch.Tensor:
        """Latent 1 through the lower layers: the relay r [B, 1, D]."""
        x = self.start.expand(cache.valid.shape[0], 1, -1)
        for j in self.lower:
            x, _ = self.layers[j](x, cache.context[j], cache.valid)
        return x

    def upper_inputs(self, relay: torch.Tensor) -> torch.Tensor:
        """The K_c latents' layer-N_r inputs [B, K_c, D]: r, then r + p_k for k = 2..K_c."""
        return torch.cat([relay, relay + self.positions[None]], dim=1)

    def forward(self, layer_states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """z [B, K_c, D]: the relay, then one parallel forward of the upper layers."""
        return self.run(self.prepare(layer_states, valid))

    def run(self, cache: StaircaseCache) -> torch.Tensor:
        """:meth:`forward` from a context cache (:meth:`prepare`); the latent caches are not kept."""
        x = self.upper_inputs(self.relay(cache))
        for j in self.upper:
            x, _ = self.layers[j](x, cache.context[j], cache.valid)
        return self.norm(x)

    def step(self, cache: StaircaseCache, x: torch.Tensor) -> torch.Tensor:
        """One more latent (its layer-N_r input ``x`` [B, 1, D]) through the upper layers with
        the caches, which it extends; returns its output [B, 1, D]."""
        for j in self.upper:
            x, cache.latents[j] = self.layers[j](x, cache.context[j], cache.valid, cache.latents.get(j))
        return self.norm(x)

    def decode(self, layer_states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The latents one at a time with the caches: equal to :meth:`forward` up to rounding."""
        cache = self.prepare(layer_states, valid)
        inputs = self.upper_inputs(self.relay(cache))
        return torch.cat([self.step(cache, inputs[:, k:k + 1]) for k in range(self.latents)], dim=1)
