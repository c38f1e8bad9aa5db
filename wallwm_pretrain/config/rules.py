"""Checks that span several sections of the config (each section checks itself in ``__post_init__``)."""

from __future__ import annotations

from wallwm_pretrain.components import resolve_train_parts
from wallwm_pretrain.config.base import ConfigError
from wallwm_pretrain.config.schema import Config


def validate(cfg: Config) -> None:
    """Checks that span several sections."""
    stride = cfg.model.frame_stride
    if cfg.data.max_frames % stride:
        raise ConfigError(
            f"data.max_frames ({cfg.data.max_frames}) must be a multiple of model.frame_stride "
            f"({stride}) so that action groups align with latent frames"
        )
    if cfg.data.mode in ("chunk", "unified") and cfg.data.chunk_horizon % stride:
        raise ConfigError(
            f"data.chunk_horizon ({cfg.data.chunk_horizon}) must be a multiple of model.frame_stride ({stride})"
        )
    try:
        resolve_train_parts(cfg.model.train_parts, cfg.model.kind, cfg.model.video_tower)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.model.kind in ("conditioner", "staircase"):
        _validate_conditioner(cfg)
    elif cfg.data.mode == "conditioner":
        raise ConfigError("data.mode=conditioner feeds the text conditioner: set model.kind=conditioner "
                          "(or data.mode=event for the towers)")
    _validate_context(cfg)
    tp = cfg.parallel.tp
    split = [("num_heads", cfg.model.num_heads), ("ffn_hidden_size", cfg.model.ffn_hidden_size)]
    if cfg.model.video_tower == "wan":
        split += [("wan.num_attention_heads", cfg.model.wan.num_attention_heads), ("wan.ffn_dim", cfg.model.wan.ffn_dim)]
    for name, value in split:
        if value % tp:
            raise ConfigError(
                f"model.{name}={value} is not divisible by parallel.tp={tp} "
                f"({value} = {value // tp} * {tp} + {value % tp}); tensor parallel splits it evenly"
            )
    _validate_context_parallel(cfg)
    pp, vpp, layers = cfg.parallel.pp, cfg.parallel.vpp, cfg.model.num_layers
    if cfg.model.action_pretrain.mapping == "anchor" and pp > 1:
        raise ConfigError(
            f"model.action_pretrain.mapping=anchor runs with parallel.pp=1 only (got pp={pp}): the K action passes "
            "reuse every layer's video output inside one forward, which a pipeline schedule does not carry "
            "between pipeline ranks; use tensor or data parallelism"
        )
    if cfg.model.action_pretrain.mapping == "anchor" and cfg.model.video_tower == "small" and cfg.model.context.sources:
        # the small towers' anchor pass embeds the caption once for the video side; a context
        # source's text stream is not carried into it
        raise ConfigError("model.action_pretrain.mapping=anchor is not combined with model.context.sources on the "
                          "small towers; use mapping=symmetric")
    if layers % (pp * vpp):
        raise ConfigError(
            f"model.num_layers={layers} does not split into parallel.pp * parallel.vpp = {pp} * {vpp} = "
            f"{pp * vpp} virtual chunks of whole coupled layers"
        )
    micro = cfg.train.microbatches
    if cfg.data.batch_size % micro:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} does not split into train.microbatches={micro} equal "
            f"microbatches ({cfg.data.batch_size} = {cfg.data.batch_size // micro} * {micro} + "
            f"{cfg.data.batch_size % micro})"
        )
    if vpp > 1 and micro % pp:
        raise ConfigError(
            f"train.microbatches={micro} must be a multiple of parallel.pp={pp} for the interleaved "
            f"schedule (parallel.vpp={vpp}): it runs microbatches in groups of pp per virtual chunk"
        )


def _validate_conditioner(cfg: Config) -> None:
    kind = cfg.model.kind
    if kind == "staircase" and not cfg.model.staircase.small_lm:
        raise ConfigError("model.kind=staircase needs model.staircase.small_lm: the folder of the frozen small LM")
    if cfg.data.mode != "conditioner":
        raise ConfigError(f"model.kind={kind} reads conditioner samples: set data.mode=conditioner (and "
                          f"data.shards to a folder from `python -m data_tools build-conditioner`), got "
                          f"data.mode={cfg.data.mode}")
    if not cfg.model.conditioner.vlm:
        raise ConfigError(f"model.kind={kind} needs model.conditioner.vlm: the folder of the frozen VLM")
    par = cfg.parallel
    if (par.tp, par.pp, par.vpp) != (1, 1, 1):
        # the frozen VLM is replicated on every rank and the heads are a few million parameters:
        # splitting them brings nothing, data parallel is the layout (see model/conditioner)
        raise ConfigError(f"model.kind={kind} trains data parallel only: set parallel.tp=1, pp=1, vpp=1 "
                          f"(got tp={par.tp}, pp={par.pp}, vpp={par.vpp})")


def _validate_context(cfg: Config) -> None:
    m, mix = cfg.model, cfg.data.context_mix
    wanted = [s for s in ("global", "staircase") if mix.get(s, 0) > 0] if cfg.data.mode == "unified" else []
    missing = [s for s in wanted if s not in m.context.sources]
    if missing:
        raise ConfigError(f"data.context_mix draws {missing[0]} contexts, which model.context.sources does not "
                          f"build (add it there, or set data.context_mix.{missing[0]}=0)")
    if not m.context.sources:
        return
    if m.kind != "towers":
        raise ConfigError(f"model.context.sources belongs to the towers (model.kind=towers), got kind={m.kind}")
    if m.video_tower == "small" and "global" in m.context.sources and not isinstance(m.conditioner.text_dim, int):
        raise ConfigError("model.context.sources=[global] on the small towers needs model.conditioner.text_dim: the "
                          "width of the text states the conditioner was aligned to (its run config says it)")
    if not m.conditioner.vlm:
        raise ConfigError("model.context.sources reads the frozen VLM: set model.conditioner.vlm")
    if cfg.parallel.pp != 1 or cfg.parallel.vpp != 1:
        # the context is computed (with gradient) before the first Wan block and read by every
        # block: a pipeline would have to ship it, and its gradient, across pipeline ranks
        raise ConfigError(f"model.context.sources runs with parallel.pp=1 (got pp={cfg.parallel.pp}, "
                          f"vpp={cfg.parallel.vpp})")


def largest_context_parallel(heads_per_rank: int, cp: int) -> int:
    """The largest context-parallel size <= ``cp`` that divides ``heads_per_rank``."""
    return max(c for c in range(1, cp + 1) if heads_per_rank % c == 0)


def _validate_context_parallel(cfg: Config) -> None:
    """Ulysses attention hands each context-parallel rank ``heads / tp / cp`` whole heads of
    every attention over the split sequence: both towers' heads per TP rank must divide by cp."""
    tp, cp = cfg.parallel.tp, cfg.parallel.cp
    if cp == 1:
        return
    if cfg.model.kind in ("conditioner", "staircase"):
        raise ConfigError(f"model.kind={cfg.model.kind} has no video or action token sequence to split: "
                          f"set parallel.cp=1 (got {cp})")
    if cfg.model.action_pretrain.mapping == "anchor":
        raise ConfigError(f"model.action_pretrain.mapping=anchor is not built with context parallelism (parallel.cp={cp}): "
                          "its recorded video passes are whole sequences; use mapping=symmetric or parallel.cp=1")
    if cfg.model.video_tower == "wan" and cfg.parallel.pp > 1:
        raise ConfigError(f"parallel.cp={cp} with parallel.pp={cfg.parallel.pp} is not built for model.video_tower=wan "
                          "(its pipeline boundary carries whole sequences); use parallel.pp=1 or the small towers")
    heads = [("num_heads", cfg.model.num_heads)]
    if cfg.model.video_tower == "wan":
        heads.append(("wan.num_attention_heads", cfg.model.wan.num_attention_heads))
    for name, value in heads:
        per_rank = value // tp
        if per_rank % cp:
            best = largest_context_parallel(per_rank, cp)
            raise ConfigError(
                f"model.{name}={value} gives {per_rank} heads per tensor-parallel rank (parallel.tp={tp}), which "
                f"parallel.cp={cp} does not divide: Ulysses attention gives every context-parallel rank whole "
                f"heads. The largest parallel.cp <= {cp} that works is {best} (ring attention is not built)"
            )
