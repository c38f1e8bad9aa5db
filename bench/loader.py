"""Loader throughput: the full training loader against a plain WebDataset read, same run.

    python bench/loader.py --shards data/shards/smoke --epochs 3 --workers 0 2

For each worker count it times (a) a plain read: shard list split by worker, tar -> samples,
decode every member, group into lists of the batch size (the floor any loader pays), and (b) the training loader: the same plus
cluster balance, shuffle buffer, cooking (crop, normalise, caption tokens and drop) and
length-bucketed collation into padded tensors. It prints samples/s of each, their ratio, and
the loader's padding efficiency. Both passes read the same shards the same number of epochs;
the order of the two is alternated per repeat so that page-cache warmth favours neither.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset as wds  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from wallwm_pretrain.config import load_config  # noqa: E402
from wallwm_pretrain.data import EventLoader, read_index  # noqa: E402


def plain_read(urls: list[str], workers: int, epochs: int, batch_size: int) -> tuple[int, float]:
    # grouped into plain lists of batch_size so that worker processes ship as many messages
    # as the training loader does (per-sample messages would handicap the baseline)
    pipe = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(), wds.decode(),
        wds.batched(batch_size, collation_fn=list, partial=True),
    )
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for group in DataLoader(pipe, batch_size=None, num_workers=workers):
            n += len(group)
    return n, time.perf_counter() - t0


def training_loader(overrides: list[str], workers: int, epochs: int) -> tuple[int, float, float]:
    cfg = load_config(None, overrides + [f"data.num_workers={workers}"])
    loader = EventLoader(cfg.data, cfg.model.frame_stride, cfg.model.caption_max_bytes)
    n, real, padded, t0 = 0, 0, 0, time.perf_counter()
    while loader.epoch < epochs:
        batch = next(loader)
        if loader.epoch >= epochs:
            break
        n += batch.size
        real += int(batch.lengths.sum())
        padded += batch.size * batch.actions.shape[1]
    return n, time.perf_counter() - t0, real / max(padded, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/shards/smoke", help="shard folder (from build-shards)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the shards per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to measure")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per setting (best is kept)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the training loader")
    args = parser.parse_args()
    index = read_index(args.shards)
    urls = [str(Path(args.shards) / s["name"]) for s in index["shards"]]
    overrides = [f"data.shards={args.shards}", "data.batch_size=8", *args.overrides]
    print(f"shards {args.shards}: {index['total_samples']} samples in {len(urls)} shards; cpus {os.cpu_count()}")
    print("| workers | plain read (samples/s) | training loader (samples/s) | ratio | padding efficiency |")
    print("|---|---|---|---|---|")
    for workers in args.workers:
        best_plain = best_full = 0.0
        eff = 0.0
        for r in range(args.repeats):
            order = ("plain", "full") if r % 2 == 0 else ("full", "plain")
            for which in order:
                if which == "plain":
                    n, dt = plain_read(urls, workers, args.epochs, 8)
                    best_plain = max(best_plain, n / dt)
                else:
                    n, dt, eff = training_loader(overrides, workers, args.epochs)
                    best_full = max(best_full, n / dt)
        print(f"| {workers} | {best_plain:.0f} | {best_full:.0f} | {best_full / best_plain:.2f} | {eff:.2f} |")


if __name__ == "__main__":
    main()
