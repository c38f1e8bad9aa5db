"""Action pretraining throughput: the anchor mapping (one video forward shared by K action draws)
against the symmetric mapping (one video forward per action draw), at equal action draws.

    python bench/anchor_noise.py
    python bench/anchor_noise.py --draws 1 2 6 --repeats 5 --tower small wan

Both contenders train stage 2 as ``configs/stages/2_action.yaml`` sets it: the video tower (and
the caption encoder) frozen, the video loss off, the action tower and the remaining-time head
trained. One measured unit is K action draws of every sample of one batch, forward and backward
(the optimizer step, the same for both, is left out):

- ``anchor``: one forward with K action draws (``model.action_pretrain.mapping=anchor``): the
  frozen video tower once under no_grad, K action passes, one backward;
- ``symmetric``: K ordinary forwards, each the video tower at its own noise level and one action
  draw, their mean loss backward once (the frozen video tower records no autograd graph either).

Models: ``small``: the smoke preset's towers (``configs/smoke.yaml``: 128 wide, 2 coupled
layers, 2 views of 32 x 32 pixels in 8 x 8 patches, 48 control steps at K_p = 4: 384 video tokens
and 48 action tokens per sample); ``wan``: the tiny Wan tower of the model tests under a 32-wide
action tower. Random weights (perturbed so no adaLN-Zero gate hides a path) and random batches;
float32 on CPU, one thread. Time: the median of ``--repeats`` runs after one warm-up, the two
contenders alternated per repeat. Output: a markdown table on stdout; action draws per second
(samples x K per unit / time) and the ratio anchor / symmetric. Read the ratios, not the absolute
numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "model"))

from _wan_wallwm_tiny import CFG as WAN_CFG, LATENT_HW, TEXT_LEN  # noqa: E402

from wallwm_pretrain.batch import Batch  # noqa: E402
from wallwm_pretrain.config import ActionPretrainConfig, ModelConfig, load_config  # noqa: E402
from wallwm_pretrain.model import build_model  # noqa: E402
from wallwm_pretrain.model.freeze import apply_train_parts  # noqa: E402

STAGE2 = ["action_tower", "time_head"]


def model_config(tower: str) -> ModelConfig:
    if tower == "small":
        smoke = load_config(ROOT / "configs" / "smoke.yaml").model
        return replace(smoke, image_size=32, num_views=2, action_dim=4, state_dim=8)
    return WAN_CFG


def make_batch(cfg: ModelConfig, tower: str, b: int, t: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((b,), t)
    actions = torch.randn(b, t, cfg.action_dim, generator=g)
    state = torch.randn(b, cfg.state_dim, generator=g)
    remaining = lengths.float() + 5.0
    if tower == "small":
        frames = torch.randint(0, 256, (b, t, cfg.num_views, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                               generator=g)
        caption = torch.randint(2, 258, (b, 24), generator=g)
        return Batch(frames, actions, state, lengths, caption, remaining=remaining)
    n = -(-t // cfg.frame_stride)
    return Batch(frames=torch.zeros(b, t, 0, dtype=torch.uint8), actions=actions, state=state, lengths=lengths,
                 caption=torch.ones(b, 1, dtype=torch.long), remaining=remaining,
                 latents=torch.randn(b, cfg.num_views, cfg.wan.in_channels, n, *LATENT_HW, generator=g),
                 text_states=torch.randn(b, TEXT_LEN, cfg.wan.text_dim, generator=g),
                 text_valid=torch.ones(b, TEXT_LEN, dtype=torch.bool))


def stage2_model(cfg: ModelConfig, mapping: str, draws: int, state: dict | None):
    cfg = replace(cfg, video_loss_weight=0.0, train_parts=STAGE2,
                  action_pretrain=ActionPretrainConfig(mapping=mapping, draws=draws))
    torch.manual_seed(0)
    model = build_model(cfg)
    if state is None:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    else:
        model.load_state_dict(state)
    apply_train_parts(model, cfg)
    return model.train()


def anchor_unit(model, batch: Batch, seed: int) -> None:
    out = model(batch, generator=torch.Generator().manual_seed(seed))  # K draws, one video forward
    out["loss"].backward()
    model.zero_grad(set_to_none=True)


def symmetric_unit(model, batch: Batch, draws: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    loss = sum(model(batch, generator=g)["loss"] for _ in range(draws)) / draws
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure(tower: str, draws: int, batch_size: int, steps: int, repeats: int) -> dict:
    cfg = model_config(tower)
    batch = make_batch(cfg, tower, batch_size, steps)
    anchor = stage2_model(cfg, "anchor", draws, None)
    symmetric = stage2_model(cfg, "symmetric", 1, anchor.state_dict())
    runs = {"anchor": lambda s: anchor_unit(anchor, batch, s),
            "symmetric": lambda s: symmetric_unit(symmetric, batch, draws, s)}
    for run in runs.values():
        run(0)  # warm-up
    times = {k: [] for k in runs}
    for r in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run(r + 1)
            times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    units = batch_size * draws
    return {"tower": tower, "draws": draws, "units": units, "anchor_s": med["anchor"],
            "symmetric_s": med["symmetric"], "anchor_dps": units / med["anchor"],
            "symmetric_dps": units / med["symmetric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", nargs="+", default=["small", "wan"], choices=["small", "wan"])
    parser.add_argument("--draws", nargs="+", type=int, default=[1, 2, 6], help="K values")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=48, help="control steps per sample (a multiple of K_p = 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size} x {args.steps} control steps, float32 CPU, {args.threads} thread(s), "
          f"median of {args.repeats}\n")
    print("| tower | K | action draws per unit | anchor (ms) | symmetric (ms) | anchor draws/s | symmetric draws/s "
          "| ratio anchor / symmetric |")
    print("|---|---|---|---|---|---|---|---|")
    for tower in args.tower:
        for k in args.draws:
            m = measure(tower, k, args.batch_size, args.steps, args.repeats)
            print(f"| {tower} | {k} | {m['units']} | {1e3 * m['anchor_s']:.1f} | {1e3 * m['symmetric_s']:.1f} | "
                  f"{m['anchor_dps']:.1f} | {m['symmetric_dps']:.1f} | {m['anchor_dps'] / m['symmetric_dps']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
