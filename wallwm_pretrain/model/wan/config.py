"""The shape of a Wan video tower, read from a diffusers ``WanTransformer3DModel`` config.json."""

from __future__ import annotations

from dataclasses import dataclass, fields

DIFFUSERS_CLASS = "WanTransformer3DModel"

# diffusers config keys that carry no shape (bookkeeping written by save_pretrained)
_BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


@dataclass(frozen=True)
class WanConfig:
    """A Wan text-to-video transformer (diffusers' names and defaults) plus the grafted parts.

    The first fields are diffusers' ``WanTransformer3DModel`` arguments; ``num_views`` and
    ``init_std`` are this project's. ``num_views > 1`` adds cross-view attention (zero output
    projection) and a camera embedding to every block.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    num_views: int = 1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be (t, h, w), got {self.patch_size!r}")
        if self.qk_norm != "rms_norm_across_heads":
            # diffusers' WanAttention always applies RMS norm across heads, whatever the key says;
            # another value would mean a checkpoint trained differently from what is built here
            raise ValueError(f"qk_norm={self.qk_norm!r}: only 'rms_norm_across_heads' (Wan's) is supported")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_dim(self) -> int:
        return (self.out_channels or self.in_channels)

    @property
    def cross_view(self) -> bool:
        return self.num_views > 1

    @classmethod
    def from_diffusers(cls, config: dict, source: str = "config.json", **extra) -> "WanConfig":
        """The tower of a diffusers ``WanTransformer3DModel`` config (a dict of its config.json).

        Args:
            config: the parsed config.json.
            source: the file it came from (named in errors).
            extra: this project's fields (``num_views``, ``init_std``).

        Raises:
            ValueError: another model class, image conditioning (``image_dim`` /
                ``added_kv_proj_dim``: Wan2.1 I2V, not supported), or a key this tower does not know.
        """
        name = config.get("_class_name", DIFFUSERS_CLASS)
        if name != DIFFUSERS_CLASS:
            raise ValueError(f"{source}: _class_name is {name!r}, expected {DIFFUSERS_CLASS!r}")
        image = {k: config[k] for k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len") if config.get(k) is not None}
        if image:
            raise ValueError(
                f"{source}: image conditioning ({', '.join(f'{k}={v}' for k, v in image.items())}) is not supported: "
                "the video tower is Wan's text-to-video model (use a T2V / TI2V checkpoint, e.g. Wan2.2-TI2V-5B)"
            )
        own = {f.name for f in fields(cls)} - {"num_views", "init_std"}
        unknown = sorted(set(config) - own - set(_BOOKKEEPING) - {"image_dim", "added_kv_proj_dim", "pos_embed_seq_len"})
        if unknown:
            raise ValueError(f"{source}: unknown WanTransformer3DModel config keys {unknown}")
        values = {k: v for k, v in config.items() if k in own}
        if "patch_size" in values:
            values["patch_size"] = tuple(values["patch_size"])
        if values.get("out_channels") is None:
            values["out_channels"] = values.get("in_channels", cls.in_channels)
        return cls(**values, **extra)

    def diffusers_config(self) -> dict:
        """The diffusers constructor arguments of the same transformer (no grafted parts)."""
        skip = {"num_views", "init_std"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
