"""Loading a run config: schema defaults <- YAML preset(s) <- ``key=value`` overrides.

Unknown keys fail naming the nearest valid one; keys that moved between sections fail naming
their new place (:data:`MOVED_KEYS`), while configs stored in checkpoints written before the
move are translated (:func:`config_from_stored`). Also the YAML and flat views of a config.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from wallwm_pretrain.config.base import ConfigError
from wallwm_pretrain.config.rules import validate
from wallwm_pretrain.config.schema import Config


# Keys that moved to the section of their reader (old -> new).
MOVED_KEYS = {
    "data.frame_stride": "model.frame_stride",
    "data.caption_max_bytes": "model.caption_max_bytes",
    "model.mode": "data.mode",
    "model.chunk_horizon": "data.chunk_horizon",
}


def _moved_key_error(source: str, old: str) -> ConfigError:
    return ConfigError(f"{source}: {old} is now {MOVED_KEYS[old]} (moved to the section that reads it)")


def _check_moved(node: Any, source: str) -> None:
    """Fail naming the new place of any moved key that ``node`` (a YAML mapping) sets."""
    if not isinstance(node, DictConfig):
        return
    for old in MOVED_KEYS:
        section, key = old.split(".")
        if section in node and isinstance(node[section], DictConfig) and key in node[section]:
            raise _moved_key_error(source, old)


def config_from_stored(config_yaml: str) -> "Config":
    """The :class:`Config` of a config stored in a checkpoint or an export.

    Configs written before keys moved between sections (:data:`MOVED_KEYS`) are translated:
    each old key's value goes to its new place. A stored config is the record of a finished
    run, so it is read as written rather than rejected like a user's preset.
    """
    raw = OmegaConf.create(config_yaml)
    for old, new in MOVED_KEYS.items():
        value = OmegaConf.select(raw, old, default="__missing__")
        if value == "__missing__":
            continue
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        del raw[old_section][old_key]
        if OmegaConf.select(raw, new, default="__missing__") == "__missing__":
            raw.setdefault(new_section, {})
            raw[new_section][new_key] = value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _nearest(key: str, valid: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for candidates in (
        difflib.get_close_matches(key, valid, n=1, cutoff=0.8),  # a typo in the leaf
        [v for v in valid if v.rsplit(".", 1)[-1] == leaf],  # right leaf, wrong section
        difflib.get_close_matches(key, valid, n=1, cutoff=0.0),
    ):
        if candidates:
            return candidates[0]
    return "?"


def _explain(exc: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    valid = _all_keys(schema)
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        return ConfigError(
            f"{source}: unknown config key '{key}'; did you mean '{_nearest(key, valid)}'?"
        )
    msg = getattr(exc, "msg", str(exc)).splitlines()[0]
    where = f" '{key}'" if key else ""
    return ConfigError(f"{source}: bad value for config key{where}: {msg}")


def _merge(base: DictConfig, other: Any, source: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source, schema) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping (the later one would
    silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"line {line}: duplicate key '{key}' (first given on line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> DictConfig:
    """A preset file as a mapping, or :class:`ConfigError` naming the file and the line.

    The text is parsed twice: once strictly (duplicate keys, syntax, top-level mapping), then by
    OmegaConf for the values, which keeps OmegaConf's reading of numbers and interpolations.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not part of the YAML
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    try:
        tree = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}, {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {str(exc).splitlines()[0]}") from None
    if tree is None:
        return OmegaConf.create({})
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, model:, ...), "
            f"got a {type(tree).__name__}"
        )
    return OmegaConf.create(text)


def load_config(path: Optional[str | Path | Sequence[str | Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Build the run config: schema defaults <- YAML preset(s) <- ``key=value`` overrides.

    Args:
        path: a YAML preset (``configs/smoke.yaml``), several merged in order (a size preset,
            then a stage preset such as ``configs/stages/1_video.yaml``), or None for the
            schema defaults.
        overrides: dotted ``key=value`` strings, e.g. ``train.steps=50``.

    Returns:
        A validated :class:`Config` object.

    Raises:
        ConfigError: unknown key (with the nearest valid key), wrong type, bad combination.
    """
    schema = OmegaConf.structured(Config)
    cfg = schema
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for one in paths:
        one = Path(one)
        loaded = read_yaml(one)
        _check_moved(loaded, str(one))
        cfg = _merge(cfg, loaded, str(one), schema)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if key in MOVED_KEYS:
            raise _moved_key_error(f"override {item!r}", key)
        if OmegaConf.select(schema, key, default="__missing__") == "__missing__":
            raise ConfigError(
                f"override {item!r}: unknown config key '{key}'; did you mean "
                f"'{_nearest(key, _all_keys(schema))}'?"
            )
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}", schema)
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise _explain(exc, "config", schema) from None
    validate(obj)
    return obj


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted key -> value, for MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
