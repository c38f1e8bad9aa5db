"""The shape of a Wan video tower: the config schema's ``model.wan`` plus depth and the grafted parts.

The shape fields (diffusers' ``WanTransformer3DModel`` argument names) are defined once, in
``wallwm_pretrain/config/wan.py``; :class:`WanConfig` extends that class with the depth and
this project's multi-view fields, and reads a diffusers config.json (a key missing there takes
diffusers' own default, read from the class's signature, not the schema's preset default).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

from wallwm_pretrain.config.wan import WanTowerConfig

DIFFUSERS_CLASS = "WanTransformer3DModel"

# diffusers config keys that carry no shape (bookkeeping written by save_pretrained)
_BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
# this project's fields, which a diffusers config.json does not have
_GRAFTED = ("num_views", "init_std")


def diffusers_defaults() -> dict:
    """diffusers' defaults of ``WanTransformer3DModel``'s constructor (the values of keys a config.json omits)."""
    from diffusers import WanTransformer3DModel

    params = inspect.signature(WanTransformer3DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


@dataclass
class WanConfig(WanTowerConfig):
    """A Wan text-to-video transformer (the schema's shape at ``num_layers`` blocks) plus the grafted parts.

    ``num_views`` and ``init_std`` are this project's. ``num_views > 1`` adds cross-view
    attention (zero output projection) and a camera embedding to every block. Defaults are
    Wan2.2 TI2V-5B's (30 blocks), as in the schema.
    """

    num_layers: int = 30
    num_views: int = 1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        self.patch_size = tuple(self.patch_size)
        if self.qk_norm != "rms_norm_across_heads":
            # diffusers' WanAttention always applies RMS norm across heads, whatever the key says;
            # another value would mean a checkpoint trained differently from what is built here
            raise ValueError(f"qk_norm={self.qk_norm!r}: only 'rms_norm_across_heads' (Wan's) is supported")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")

    @classmethod
    def from_schema(cls, shape: WanTowerConfig, num_layers: int, num_views: int = 1,
                    init_std: float = 0.02) -> "WanConfig":
        """The tower of the config's ``model.wan`` at ``num_layers`` blocks and ``num_views`` views."""
        values = {f.name: getattr(shape, f.name) for f in fields(WanTowerConfig)}
        return cls(**values, num_layers=num_layers, num_views=num_views, init_std=init_std)

    def shape(self) -> WanTowerConfig:
        """The schema's part (``model.wan``) of this tower: everything but the depth and grafted fields."""
        values = {f.name: getattr(self, f.name) for f in fields(WanTowerConfig)}
        values["patch_size"] = list(values["patch_size"])
        return WanTowerConfig(**values)

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
        own = {f.name for f in fields(cls)} - set(_GRAFTED)
        unknown = sorted(set(config) - own - set(_BOOKKEEPING) - {"image_dim", "added_kv_proj_dim", "pos_embed_seq_len"})
        if unknown:
            raise ValueError(f"{source}: unknown WanTransformer3DModel config keys {unknown}")
        missing = own - set(config)
        values = {k: v for k, v in diffusers_defaults().items() if k in missing} if missing else {}
        values.update({k: v for k, v in config.items() if k in own})
        if values.get("out_channels") is None:
            values["out_channels"] = values["in_channels"]
        try:
            return cls(**values, **extra)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def diffusers_config(self) -> dict:
        """The diffusers constructor arguments of the same transformer (no grafted parts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _GRAFTED}
