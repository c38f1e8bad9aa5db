"""The ``data`` section: what a sample is and how batches are drawn (read by ``wallwm_pretrain.data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from wallwm_pretrain.config.base import ConfigError


@dataclass
class CaptionDropConfig:
    """Length-aware caption drop: rho rises from rho_min to rho_max by a cosine ramp in L_e."""

    rho_min: float = 0.1
    """Drop probability for events of at most ``l_min`` frames."""
    rho_max: float = 0.9
    """Drop probability for events of at least ``l_max`` frames."""
    l_min: int = 129
    """Event length (frames) where the ramp starts (paper: 129)."""
    l_max: int = 220
    """Event length (frames) where the ramp ends (paper: 220)."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.rho_min <= self.rho_max <= 1.0):
            raise ConfigError(
                f"data.caption_drop needs 0 <= rho_min <= rho_max <= 1, got rho_min={self.rho_min}, "
                f"rho_max={self.rho_max}"
            )
        if self.l_min >= self.l_max:
            raise ConfigError(
                f"data.caption_drop needs l_min < l_max, got l_min={self.l_min}, l_max={self.l_max}"
            )


@dataclass
class BalanceConfig:
    """Cluster-balanced mix over the vision-language x action cluster product.

    A sample in VL cluster v and action cluster a is kept with probability proportional to
    n_v^(alpha_vl - 1) * n_a^(alpha_action - 1), so the target mix is
    p(v, a) ~ n_(v,a) * n_v^(alpha_vl - 1) * n_a^(alpha_action - 1): alpha 1 = natural,
    0 = every cluster of that axis equally often (for independent axes).
    """

    alpha_vl: float = 1.0
    """Exponent on vision-language cluster counts (1 natural, 0 balanced)."""
    alpha_action: float = 1.0
    """Exponent on action cluster counts (1 natural, 0 balanced)."""

    def __post_init__(self) -> None:
        for name in ("alpha_vl", "alpha_action"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.balance.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.alpha_vl != 1.0 or self.alpha_action != 1.0


DATA_MODES = ("event", "chunk", "conditioner", "unified")


CONTEXT_SOURCES = ("atomic", "global", "staircase")


@dataclass
class DataConfig:
    """Where training samples come from and how they are batched."""

    shards: str = "data/shards/smoke"
    """Folder holding WebDataset ``*.tar`` shards and their ``index.json`` (from build-shards): a
    path, ``s3://bucket/prefix`` (credentials and endpoint from the environment or the AWS
    config: ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...), ``http(s)://host/prefix``
    or ``pipe:COMMAND`` whose ``{name}`` the loader replaces by ``index.json`` or a shard's name
    (e.g. ``pipe:aws s3 cp s3://bucket/prefix/{name} -``)."""
    cache_dir: str = ""
    """Node-local folder for copies of remote shards (read from there in later epochs and by the
    node's other readers); empty = stream remote shards without keeping them."""
    cache_max_gb: float = 100.0
    """Size bound of ``cache_dir`` (GB, 1e9 bytes); least recently used shards are deleted."""
    batch_size: int = 8
    """Samples per rank per optimizer step."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = read in the training process)."""
    shuffle_buffer: int = 64
    """Sample-level shuffle buffer; 0 disables sample shuffling."""
    mode: str = "event"
    """What a sample is. ``event``: one whole event with its next-event caption. ``chunk``: fixed
    ``chunk_horizon`` windows conditioned on the task instruction (the paper's baseline).
    ``conditioner``: one observation inside an event with the task and the captions already
    done, for the text conditioner (shards from ``data_tools build-conditioner``; batches are
    ``ConditionerBatch``, never length-bucketed, and caption drop does not apply).
    ``unified``: fixed ``chunk_horizon`` windows on an observation-centred window of latent
    frames (``history_latents`` before the anchor), tiled over whole episodes across event
    boundaries (shards from ``data_tools build-episodes``), each with a text-context source
    drawn from ``context_mix``."""
    chunk_horizon: int = 16
    """H_a, control steps per window in chunk and unified mode (N = H_a / K_p future latents)."""
    history_latents: int = 2
    """M, latent frames before the anchor in unified mode (``M * K_p`` control steps; windows
    near an episode's start repeat its first frame)."""
    context_mix: Dict[str, float] = field(default_factory=lambda: {"atomic": 1.0, "global": 0.0, "staircase": 0.0})
    """Unified mode: relative weights of the text-context sources a window is trained with,
    drawn per window: ``atomic`` (the caption of the event the window mostly covers), ``global``
    (the conditioner's aligned states of the task) or ``staircase`` (projected Staircase latents;
    these two need ``model.context``)."""
    max_frames: int = 48
    """Longest event kept whole, in control steps; longer events are cropped at a random start."""
    caption_drop: CaptionDropConfig = field(default_factory=CaptionDropConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    length_buckets: List[int] = field(default_factory=lambda: [8, 16, 32])
    """Upper bounds (control steps) of length buckets; a batch draws from one bucket so that
    short events are not padded to long ones. Empty = plain batching in stream order."""
    max_bad_samples: int = 0
    """Bad samples and unreadable shards that may be skipped over the whole run, each counted
    and logged once (an unreadable shard is not read again); 0 = stop at the first one with an
    error naming shard and key."""
    seed: int = 0
    """Seed for shard order, sample shuffling, crops and caption drop."""
    verify: str = "size"
    """Shards checked against index.json before the first step: ``size`` (bytes and sample
    count from the tar headers), ``sha256`` (also every byte's checksum) or ``none``."""

    def __post_init__(self) -> None:
        if self.verify not in ("size", "sha256", "none"):
            raise ConfigError(f"data.verify must be size, sha256 or none, got {self.verify!r}")
        if self.cache_max_gb <= 0:
            raise ConfigError(f"data.cache_max_gb must be > 0, got {self.cache_max_gb}")
        if self.max_bad_samples < 0:
            raise ConfigError(f"data.max_bad_samples must be >= 0, got {self.max_bad_samples}")
        if self.mode not in DATA_MODES:
            raise ConfigError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {self.mode!r}")
        if self.history_latents < 0:
            raise ConfigError(f"data.history_latents must be >= 0, got {self.history_latents}")
        unknown = sorted(set(self.context_mix) - set(CONTEXT_SOURCES))
        if unknown:
            raise ConfigError(f"data.context_mix: unknown source {unknown[0]!r}; the sources are "
                              f"{', '.join(CONTEXT_SOURCES)}")
        if any(w < 0 for w in self.context_mix.values()) or not sum(self.context_mix.values()) > 0:
            raise ConfigError(f"data.context_mix needs weights >= 0 with a positive sum, got {dict(self.context_mix)}")
        for name in ("batch_size", "max_frames", "chunk_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if list(self.length_buckets) != sorted(set(self.length_buckets)) or any(b < 1 for b in self.length_buckets):
            raise ConfigError(f"data.length_buckets must be increasing positive ints, got {list(self.length_buckets)}")
