"""Per-window against per-episode cluster balance in unified mode, on one episode-shard folder
whose windows ``python -m data_tools cluster-windows`` clustered.

Reads the folder twice through the training loader at the same ``data.balance``: once as it is
(per-window balance) and once from a copy whose index.json has the window record removed (the
per-episode balance the loader falls back to). Prints, for each, the windows kept per epoch and
the share of each window VL cluster among the kept windows, next to the natural shares.

    python bench/window_balance.py --shards data/shards/smoke-episodes --horizon 16 --history 2
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from wallwm_pretrain.config import BalanceConfig, DataConfig
from wallwm_pretrain.data.loader import EventLoader
from wallwm_pretrain.windows import window_key


def window_vl(folder: Path) -> dict[str, int]:
    """window key -> its VL cluster, from the episode jsons."""
    out = {}
    for shard in json.loads((folder / "index.json").read_text())["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    rec = meta["windows"]
                    for i, v in enumerate(rec["vl"]):
                        out[window_key(member.name[:-5], i * rec["horizon"])] = v
    return out


def kept(folder: Path, args, epochs: int) -> Counter:
    cfg = DataConfig(shards=str(folder), mode="unified", chunk_horizon=args.horizon, history_latents=args.history,
                     batch_size=1, shuffle_buffer=0, length_buckets=[], seed=args.seed,
                     balance=BalanceConfig(args.alpha_vl, args.alpha_action))
    loader = EventLoader(cfg, frame_stride=args.frame_stride, caption_max_bytes=64)
    keys = Counter()
    while True:
        batch = next(loader)
        if loader.epoch >= epochs:
            return keys
        keys.update(batch.keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--horizon", type=int, required=True)
    p.add_argument("--history", type=int, required=True)
    p.add_argument("--frame-stride", type=int, default=4)
    p.add_argument("--alpha-vl", type=float, default=0.5)
    p.add_argument("--alpha-action", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the fallback's warning is expected here
    vl = window_vl(args.shards)
    natural = Counter(vl.values())
    rows = {"natural": natural}
    with tempfile.TemporaryDirectory() as tmp:
        episodes = Path(shutil.copytree(args.shards, Path(tmp) / "episodes"))
        index = json.loads((episodes / "index.json").read_text())
        index.pop("windows")
        (episodes / "index.json").write_text(json.dumps(index))
        for name, folder in (("per episode", episodes), ("per window", args.shards)):
            keys = kept(folder, args, args.epochs)
            rows[name] = Counter()
            for k, n in keys.items():
                rows[name][vl[k]] += n
    clusters = sorted(natural)
    print(f"{len(vl)} windows, alpha_vl {args.alpha_vl}, alpha_action {args.alpha_action}, {args.epochs} epochs")
    print("| balance | windows per epoch | " + " | ".join(f"VL {c}" for c in clusters) + " |")
    print("|---|---|" + "---|" * len(clusters))
    for name, counts in rows.items():
        total = sum(counts.values())
        per_epoch = total if name == "natural" else total / args.epochs
        print(f"| {name} | {per_epoch:.1f} | " + " | ".join(f"{counts[c] / total:.3f}" for c in clusters) + " |")


if __name__ == "__main__":
    main()
