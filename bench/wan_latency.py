"""Where a Wan-tower plan spends its time: VAE encode, text, denoising per step, VAE decode.

    python bench/wan_latency.py
    python bench/wan_latency.py --denoise-steps 1 2 4 10 --repeats 5 --json out.json

One plan of the Wan-tower policy (``eval/wan_policy.py``) is, in order: the observation's views
through the frozen VAE (one single-frame clip per view), the caption through UMT5 (the first time;
the policy keeps the states of a caption it has seen, so a repeated caption costs a dictionary
look-up, measured as ``text (cached)``), both towers denoised by ``eval/wan_sampler.py`` (one
forward of the whole model per scheduler step), and, on request only (``predict_video``), the
predicted latent frames decoded by the VAE. Measured here on the tiny random models of
``convert make-tiny`` (random weights; a converted tower times the same), float32 on CPU,
``--threads`` threads, two views of 32 x 32, 16 control steps (4 latent frames at K_p = 4), the
text context zero-padded to 512 positions as Wan's; time is the median of ``--repeats`` runs after
one warm-up. The parts are timed separately and their sum is the chunk.

The same breakdown for the Wan2.2 TI2V-5B preset (``configs/wallwm_wan22_5b.yaml``) is computed
from the planner's FLOPs (``model/wan_wallwm.forward_flops``), one view of 704 x 1280 (44 x 80
latents), 2 history latent frames, the anchor and 7 predicted latent frames (32 control steps at
K_p = 4), 512 text positions: denoising FLOPs per step. The VAE and UMT5 are outside the planner
and have no FLOP count here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAPTION = "pick up the red block and place it in the bowl"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def tiny_model(models: Path):
    from wallwm_pretrain.config import ModelConfig
    from wallwm_pretrain.model.wan import WanConfig
    from wallwm_pretrain.model.wan.from_diffusers import load_diffusers_folder
    from wallwm_pretrain.model.wan_wallwm import WanWallWM

    config, _ = load_diffusers_folder(models / "transformer")
    wan = WanConfig.from_diffusers(config, num_views=2)
    cfg = ModelConfig(video_tower="wan", video_input="latents", wan=wan.shape(), num_layers=wan.num_layers,
                      hidden_size=32, num_heads=2, ffn_hidden_size=64, frame_stride=4, num_views=2, action_dim=4,
                      state_dim=8, image_size=32, video_time_shift=5.0, text_len=512)
    torch.manual_seed(0)
    return WanWallWM(cfg).eval()


def measure(models: Path, steps_list: list[int], repeats: int) -> dict:
    from wallwm_pretrain.eval.wan_sampler import sample_wan
    from wallwm_pretrain.model.wan.frozen import FrozenWan

    model = tiny_model(models)
    frozen = FrozenWan(models / "vae", models / "text_encoder", models / "tokenizer")
    g = torch.Generator().manual_seed(0)
    views, size, control = 2, 32, 16
    frames = torch.randint(0, 256, (views, 1, size, size, 3), generator=g, dtype=torch.uint8)
    clean = frozen.encode_frames(frames)[None]  # [1, V, Z, 1, h, w]: the anchor of each view
    state = torch.randn(1, 8, generator=g)
    n = control // 4
    noise = (torch.randn(1, views, clean.shape[2], n - 1, *clean.shape[-2:], generator=g),
             torch.randn(1, control, 4, generator=g))

    def text_uncached():
        frozen._states.clear()
        return frozen.text_batch([CAPTION])

    text, valid = frozen.text_batch([CAPTION])
    out = {"encode_ms": timed(lambda: frozen.encode_frames(frames), repeats),
           "text_ms": timed(text_uncached, repeats),
           "text_cached_ms": timed(lambda: frozen.text_batch([CAPTION]), repeats)}
    latents = sample_wan(model, clean, state, text, valid, control, 1, noise).latents
    out["decode_ms"] = timed(lambda: frozen.decode(latents.flatten(0, 1)), repeats)
    out["denoise_ms"] = {}
    for steps in steps_list:
        out["denoise_ms"][steps] = timed(lambda: sample_wan(model, clean, state, text, valid, control, steps, noise),
                                         repeats)
    return out


def preset_flops() -> dict:
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.model.wan_wallwm import forward_flops

    cfg = load_config(ROOT / "configs" / "wallwm_wan22_5b.yaml",
                      ["model.action_dim=7", "model.state_dim=8", "model.num_views=1", "model.image_size=704"])
    history, predicted, control = 2, 8, 32
    parts = forward_flops(cfg.model, (history + predicted, 44, 80), control, int(cfg.model.text_len))
    return {"denoise_flops_per_step": parts["total"], "video_tower": parts["video_tower"],
            "action_tower": parts["action_tower"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--denoise-steps", type=int, nargs="+", default=[1, 2, 4, 10])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", type=Path, help="a make-tiny folder (default: made in a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models
        if models is None:
            from wallwm_pretrain.convert.tiny import make_tiny

            models = make_tiny(Path(tmp) / "models", seed=0)["vae"].parent
        got = measure(models, args.denoise_steps, args.repeats)
    flops = preset_flops()
    print(f"tiny Wan on CPU ({args.threads} thread(s)), one plan: 2 views of 32 x 32, 16 control steps, "
          f"median of {args.repeats}")
    print("| denoise steps | VAE encode ms | text ms (first / cached) | denoise ms | per step ms | "
          "plan ms (cached text) | VAE decode ms (on request) |")
    print("|---|---|---|---|---|---|---|")
    for steps, ms in got["denoise_ms"].items():
        plan = got["encode_ms"] + got["text_cached_ms"] + ms
        print(f"| {steps} | {got['encode_ms']:.1f} | {got['text_ms']:.1f} / {got['text_cached_ms']:.3f} | {ms:.1f} "
              f"| {ms / steps:.1f} | {plan:.1f} | {got['decode_ms']:.1f} |")
    print(f"\nWan2.2 TI2V-5B preset by the planner's FLOPs (1 view 44 x 80 latents, 2 + 8 latent frames, "
          f"32 control steps, 512 text positions): {flops['denoise_flops_per_step'] / 1e12:.1f} TFLOP per denoise "
          f"step (video tower {flops['video_tower'] / 1e12:.1f}, action tower {flops['action_tower'] / 1e12:.2f}); "
          "x steps for a plan. VAE encode/decode and UMT5: not counted by the planner.")
    if args.json:
        args.json.write_text(json.dumps({"tiny_cpu": got, "ti2v_5b": flops}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
