"""``python -m wallwm_pretrain.plan``: parameters, per-rank memory and FLOPs of a run config.

    python -m wallwm_pretrain.plan --config configs/wallwm_wan22_5b.yaml --gpus 8 parallel.tp=2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

from wallwm_pretrain.config import AUTO, DATA_DIMS, Config, ConfigError, load_config

GIB = 1024**3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.plan",
        description=(
            "Build a run config's model on the meta device (no memory, no weights) and print its "
            "parameters per tower, the per-rank memory of weights, gradients and optimizer state "
            "under the chosen parallel layout and optim.muon_mode, the activations one microbatch "
            "keeps for backward (measured on meta tensors, with and without model.recompute=full), "
            "and the FLOPs per sample."
        ),
        epilog="Example: python -m wallwm_pretrain.plan --config configs/smoke.yaml --gpus 4 parallel.tp=2",
    )
    parser.add_argument("--config", action="append",
                        help="YAML preset (default: schema defaults); given again, merged in order (e.g. a size "
                             "preset, then a stage preset of configs/stages/)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="ranks in the job; data-parallel size = gpus / (tp * pp * cp) (default: tp * pp * cp)")
    parser.add_argument("--steps", type=int, default=None,
                        help="control steps per sample (default: data.max_frames, the longest sample)")
    parser.add_argument("--latent-size", default=None, metavar="HxW",
                        help="model.video_tower=wan: the VAE latent frame's height x width (e.g. 44x80 for "
                             "704x1280 video through Wan2.2's VAE, spatial compression 16)")
    parser.add_argument("--text-tokens", type=int, default=512,
                        help="model.video_tower=wan: text-encoder states per caption (default 512, Wan's "
                             "caption length)")
    parser.add_argument("--vlm", metavar="FOLDER", default=None,
                        help="also count the conditioner's frozen VLM (a Qwen3.5 folder; only its config.json is "
                             "read): its weights sit whole on every rank, beside the towers (stages 3 to 5)")
    parser.add_argument("--vlm-dtype", choices=["bf16", "fp32"], default="bf16",
                        help="dtype of the frozen VLM's weights (default bf16)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="memory of one accelerator; prints the headroom of the busiest rank")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser.parse_intermixed_args(argv)  # options and key=value overrides in any order


def _check_dims(cfg: Config) -> None:
    missing = [name for name in DATA_DIMS if getattr(cfg.model, name) == AUTO]
    if missing:
        raise ConfigError(
            "the plan needs the data dims the model is built for; set "
            + ", ".join(f"model.{name}" for name in missing)
            + " (they are 'auto' here, read from the shards only when training)"
        )


def _gib(n: float) -> str:
    return f"{n / GIB:10.3f}"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3f}{unit}"
    return str(int(n))


def _frozen_vlm_bytes(folder: str, dtype: str) -> int:
    """Bytes of a VLM folder's weights at ``dtype``, from its config.json alone (meta device)."""
    from wallwm_pretrain.model.conditioner.errors import ConditionerError
    from wallwm_pretrain.model.conditioner.vlm import check_config, vlm_memory_bytes

    try:
        return vlm_memory_bytes(check_config(folder), 2 if dtype == "bf16" else 4)
    except ConditionerError as exc:
        raise ConfigError(f"--vlm: {exc}") from None


def _latent_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--latent-size must be HxW, e.g. 44x80, got {text!r}") from None
    return h, w


def rank_memory(cfg: Config, measured, layout, pp_rank: int, frozen_vlm: int = 0,
                adamw_only: bool = False) -> dict[str, float]:
    """Bytes on the busiest TP rank of pipeline rank ``pp_rank``: parameters (elements), weights,
    grads, AdamW and Muon state, the activations kept without and with ``recompute=full``, and
    the total as the config trains. Context parallelism (``parallel.cp``) divides the coupled
    layers' activations by cp (each rank keeps its piece of every sample's tokens; the caption
    and conditioning, a small part, are whole on every rank and counted whole with the input and
    output side) and spreads the optimizer's shards and homes over DP x CP (``layout.dp``) (``measured``: :func:`~.measure.measure_forward` of one
    microbatch of the whole model; ``layout``: :class:`~.memory.Layout`). ``adamw_only``: every
    parameter in AdamW (the baseline of ``bench/gpu_check.py mfu``)."""
    from wallwm_pretrain.parallel.pipeline_split import pipeline_slices
    from wallwm_pretrain.plan.measure import meta_model
    from wallwm_pretrain.plan.memory import pipeline_rank_state_bytes

    tp, pp, vpp, cp = cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp, cfg.parallel.cp
    model_cfg = dataclasses.replace(cfg.model, recompute="none")
    slices = pipeline_slices(cfg.model.num_layers, pp, vpp, pp_rank)
    parts = [meta_model(model_cfg, s) for s in slices]
    if adamw_only:
        for part in parts:
            for p in part.parameters():
                p.use_adamw = True
    states = [pipeline_rank_state_bytes(part, layout, cfg.optim.muon_mode, cfg.optim.muon_split_fused) for part in parts]
    layers = [f"layer {i}" for s in slices for i in s.layers]
    edges = [p for s in slices for p, on in (("embed", s.embed), ("head", s.head)) if on]
    # 1F1B: pipeline rank r keeps the activations of up to pp - r microbatches at once
    in_flight = min(pp - pp_rank, cfg.train.microbatches) if pp > 1 else 1
    edge = sum(measured.part_bytes(p, tp) for p in edges)
    per_micro = sum(measured.part_bytes(p, tp) for p in layers) / cp + edge
    act = in_flight * per_micro
    kept = measured.kept(layers) / cp
    transient = max((measured.part_bytes(p, tp) for p in layers), default=0) / cp
    act_full = in_flight * (kept + edge) + transient
    static = sum(s.total for s in states)
    # the total counts activations as the config trains: recomputed or not
    total = static + (act_full if cfg.model.recompute == "full" else act) + frozen_vlm
    return {
        "params": sum(s.params for s in states), "weights": sum(s.weights for s in states),
        "grads": sum(s.grads for s in states), "adamw": sum(s.adamw for s in states),
        "muon": sum(s.muon for s in states), "activations": act, "activations_full": act_full, "total": total,
    }


def plan(cfg: Config, gpus: int | None, steps: int | None, gpu_memory_gib: float | None,
         latent_size: str | None = None, text_tokens: int = 512, vlm: str | None = None,
         vlm_dtype: str = "bf16") -> str:
    """The plan's report for one config (see the package docstring)."""
    import torch  # noqa: F401  (slow import; after argument errors)

    from wallwm_pretrain.plan.measure import measure_forward, meta_batch, meta_model
    from wallwm_pretrain.plan.memory import Layout

    _check_dims(cfg)
    if cfg.model.kind == "conditioner":  # a check of the input, not a dispatch
        raise ConfigError("the plan measures the towers (model.kind=towers); the text conditioner's memory is its "
                          "frozen VLM, whole on every rank, plus its small heads: give the towers' config with --vlm")
    frozen_vlm = _frozen_vlm_bytes(vlm, vlm_dtype) if vlm else 0
    tp, pp, vpp, cp = cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp, cfg.parallel.cp
    gpus = gpus or tp * pp * cp
    if gpus % (tp * pp * cp):
        raise ConfigError(f"--gpus {gpus} is not a multiple of parallel.tp * parallel.pp * parallel.cp = {tp * pp * cp}")
    dp = gpus // (tp * pp * cp)
    layout = Layout(tp, pp, dp * cp)  # the optimizer's data-parallel group is DP x CP
    micro = cfg.data.batch_size // cfg.train.microbatches
    steps = steps or cfg.data.max_frames
    steps = -(-steps // cfg.model.frame_stride) * cfg.model.frame_stride
    model_cfg = dataclasses.replace(cfg.model, recompute="none")

    whole = meta_model(model_cfg)
    counts = whole.parameter_counts()
    latent_hw = _latent_size(latent_size)
    if cfg.model.video_tower == "wan" and latent_hw is None:  # a check of the input, not a dispatch
        raise ConfigError("model.video_tower=wan: give the latent frame size, --latent-size HxW (e.g. 44x80)")
    measured = measure_forward(whole, meta_batch(model_cfg, micro, steps, latent_hw, text_tokens))

    m = cfg.model
    towers = (f"action tower hidden {m.hidden_size}, {m.num_heads} heads, FFN {m.ffn_hidden_size}")
    if m.video_tower == "wan":  # the report names the Wan shape it planned for
        towers = (f"Wan video tower dim {m.wan.num_attention_heads * m.wan.attention_head_dim}, "
                  f"{m.wan.num_attention_heads} heads, FFN {m.wan.ffn_dim}; " + towers
                  + f"; latents {m.wan.in_channels} x {-(-steps // m.frame_stride)} x {latent_size}, "
                  f"{text_tokens} text tokens, {m.num_views} view(s)")
    lines = [
        f"model: {m.num_layers} coupled layers; {towers}",
        "parameters: " + ", ".join(f"{k} {_count(v)}" for k, v in counts.items()),
        f"layout: {gpus} ranks = TP {tp} x PP {pp} x CP {cp} x DP {dp}"
        + (f" (VPP {vpp})" if vpp > 1 else "")
        + f"; optim.muon_mode={cfg.optim.muon_mode}; microbatch {micro} samples of {steps} control steps",
        "",
        "per rank (the busiest TP rank of each pipeline rank; GiB):",
        "  pp rank |   params |    weights |      grads |      AdamW |       Muon | activations | recompute=full |      total",
        f"  (total: weights + grads + AdamW + Muon + the activations of model.recompute={cfg.model.recompute}"
        + (f" + the frozen VLM's {frozen_vlm / GIB:.3f} GiB)" if vlm else ")"),
    ]
    worst = 0.0
    for pp_rank in range(pp):
        r = rank_memory(cfg, measured, layout, pp_rank, frozen_vlm)
        worst = max(worst, r["total"])
        lines.append(
            f"  {pp_rank:7d} | {_count(r['params']):>8s} | {_gib(r['weights'])} | "
            f"{_gib(r['grads'])} | {_gib(r['adamw'])} | "
            f"{_gib(r['muon'])} | {_gib(r['activations']):>11s} | {_gib(r['activations_full']):>14s} | "
            f"{_gib(r['total'])}"
        )
    fwd = measured.flops / micro
    lines += [
        "",
        f"activations: fp32, {micro} samples per microbatch, times the microbatches in flight in 1F1B; "
        "attention counted as the fused kernel keeps it (no score matrix) where the model calls "
        "scaled_dot_product_attention; bf16 autocast keeps most of them at half the size; "
        "recompute=full keeps each layer's input plus one layer's activations while it is rebuilt",
        f"FLOPs per sample: forward {fwd:.3e}, training (3x) {3 * fwd:.3e}"
        + (", plus one forward of the towers with recompute=full" if cfg.model.recompute == "full" else ""),
    ]
    if vlm:
        lines.append(
            f"frozen VLM ({vlm}): {frozen_vlm / GIB:.3f} GiB of {vlm_dtype} weights on every rank. It is not split by "
            "tensor or pipeline parallel (a transformers model, not megatron's layers): each rank runs it whole on "
            "its own microbatches under no_grad, so it keeps no activations for backward and has no gradients or "
            "optimizer state; its transient forward activations are not counted"
        )
    if gpu_memory_gib is not None:
        lines.append(f"busiest rank: {worst / GIB:.2f} GiB of {gpu_memory_gib:.0f} GiB "
                     f"({'fits' if worst <= gpu_memory_gib * GIB else 'does NOT fit'}, "
                     f"with model.recompute={cfg.model.recompute})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")
    try:
        cfg = load_config(args.config, args.overrides)
        print(plan(cfg, args.gpus, args.steps, args.gpu_memory_gib, args.latent_size, args.text_tokens,
                   args.vlm, args.vlm_dtype))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
