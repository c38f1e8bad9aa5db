"""The ``optim`` section: Muon, distributed Muon and AdamW (read by ``wallwm_pretrain.optim``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from wallwm_pretrain.config.base import ConfigError


@dataclass
class OptimConfig:
    """Muon for hidden 2-D matrices, AdamW for everything else, warmup + cosine schedule."""

    lr: float = 0.02
    """Peak learning rate of the Muon group."""
    adamw_lr: float = 0.003
    """Peak learning rate of the AdamW group (embeddings, norms, biases, heads)."""
    weight_decay: float = 0.01
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_dtype: str = "auto"
    """Newton-Schulz precision: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32`` or ``bfloat16``."""
    adamw_betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    adamw_eps: float = 1e-8
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    """Cosine decays to ``min_lr_ratio * peak`` at ``train.steps``."""
    grad_clip: float = 1.0
    """Global grad-norm clip; 0 disables clipping."""
    muon_mode: str = "owner"
    """``owner``: each logical matrix orthogonalised once, on one home rank (distributed Muon,
    ZeRO-1 AdamW); ``gather``: every rank assembles and orthogonalises every matrix;
    ``replicated``: every rank keeps the whole optimizer state (TP slices gathered per matrix)."""
    muon_reduce: str = "home"
    """Owner mode: ``home`` reduces each Muon matrix's gradient straight to its home during
    backward and returns the update behind the next forward, and reduce-scatters each AdamW
    gradient into the ZeRO-1 shard that updates it (the all-reduce bound in bytes);
    ``all_reduce`` all-reduces every gradient first and returns the update within the step
    (1.5x the bound)."""
    muon_tp_ns: str = "gather"
    """Owner mode under tensor parallelism: ``gather`` joins each matrix's TP pieces on its home
    (bit-identical to single-process Muon); ``sharded`` keeps long, thin matrices split along
    their long side (long side > tp x short side) in pieces and runs Newton-Schulz through one
    all-reduce of their Gram matrix over TP (fewer bytes; equal to single-process Muon to
    rounding, not to the bit); ``sharded_all`` keeps every split matrix in pieces (for comparison)."""
    muon_split_fused: bool = True
    """Orthogonalise fused weights as their logical matrices (Q, K, V; gate, up; K, V)."""
    ns_variant: str = "quintic"
    """Newton-Schulz: ``quintic`` (3.4445, -4.7750, 2.0315), ``polar_express`` (per-step
    coefficients) or ``gram`` (the quintic evaluated through the Gram matrix of the smaller side:
    fewer flops for matrices with aspect ratio above about 2, equal to the quintic within 1e-5
    in fp32)."""
    muon_bucket_elems: int = 4_194_304
    """Elements per communication bucket of distributed Muon."""

    def __post_init__(self) -> None:
        if self.muon_mode not in ("owner", "gather", "replicated"):
            raise ConfigError(f"optim.muon_mode must be owner, gather or replicated, got {self.muon_mode!r}")
        if self.muon_reduce not in ("home", "all_reduce"):
            raise ConfigError(f"optim.muon_reduce must be home or all_reduce, got {self.muon_reduce!r}")
        if self.muon_tp_ns not in ("gather", "sharded", "sharded_all"):
            raise ConfigError(f"optim.muon_tp_ns must be gather, sharded or sharded_all, got {self.muon_tp_ns!r}")
        if self.ns_variant not in ("quintic", "polar_express", "gram"):
            raise ConfigError(f"optim.ns_variant must be quintic, polar_express or gram, got {self.ns_variant!r}")
        if self.muon_mode == "replicated" and (self.muon_split_fused or self.ns_variant != "quintic"):
            raise ConfigError(
                "optim.muon_mode=replicated orthogonalises fused weights whole with the quintic "
                "coefficients: set optim.muon_split_fused=false and optim.ns_variant=quintic, or use owner/gather"
            )
        if self.ns_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(
                f"optim.ns_dtype must be auto, float32 or bfloat16, got {self.ns_dtype!r}"
            )
        if len(self.adamw_betas) != 2:
            raise ConfigError(f"optim.adamw_betas needs two values, got {list(self.adamw_betas)}")
