"""Next-event accuracy and remaining-time error of a trained conditioner on held-out episodes.

    python bench/conditioner_accuracy.py --ckpt runs/cond_smoke --train data/shards/smoke-cond \\
        --heldout data/shards/heldout-cond

For every held-out conditioner sample (an observation inside an event, the task, the events
done) the conditioner names the next event and its remaining steps. A caption counts as right
when its *primitive* (reach, grasp, lift, ...) and its *object* (the cube it names) are those of
the recorded caption: the synthetic world words each event with one of several paraphrases
picked at random, so exact wording is not what the head can know. Both are read back from the
captions with the synthetic world's own templates (``data_tools/synthworld/captions.py``).

Baseline, from the training shards only: given the done events (their primitive and object
sequence), the most frequent next event among training samples with the same done events, and
their mean remaining steps (falling back to the same with only the number of done events, then
to the overall most frequent). It sees no camera and no task.

Prints a markdown table; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.synthworld.captions import L1  # noqa: E402

# (primitive, compiled template with named groups) for every L1 paraphrase
_PATTERNS = []
for _prim, _templates in L1.items():
    for _t in _templates:
        rx = re.escape(_t)
        for name in ("a", "t", "p"):
            rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>.+?)", 1)
            rx = rx.replace(re.escape("{" + name + "}"), ".+?")
        _PATTERNS.append((_prim, re.compile(rx + r"\Z")))


def meaning(caption: str) -> tuple[str, str] | None:
    """(primitive, object) of a synthetic L1 caption, or None when no template matches."""
    for prim, rx in _PATTERNS:
        m = rx.match(caption.strip())
        if m:
            return prim, m.group("a")
    return None


def samples(folder: str):
    from wallwm_pretrain.data.decode import decode_sample
    from wallwm_pretrain.data.index import read_index
    from wallwm_pretrain.data.tarread import read_tar

    index = read_index(folder)
    if index.get("kind") != "conditioner":
        raise SystemExit(f"{folder}: not a conditioner shard folder (python -m data_tools build-conditioner)")
    for shard in index["shards"]:
        for crude in read_tar(str(Path(folder) / shard["name"])):
            yield decode_sample(crude)


class Baseline:
    """Most frequent next event (and mean remaining steps) given the done events."""

    def __init__(self, folder: str) -> None:
        self.by_done: dict = defaultdict(Counter)
        self.by_count: dict = defaultdict(Counter)
        self.time_done: dict = defaultdict(list)
        self.time_count: dict = defaultdict(list)
        self.overall: Counter = Counter()
        for s in samples(folder):
            meta = s["json"]
            key, target = self.key(meta["done_captions"]), meaning(meta["caption"])
            self.by_done[key][target] += 1
            self.by_count[len(key)][target] += 1
            self.time_done[key].append(meta["remaining"])
            self.time_count[len(key)].append(meta["remaining"])
            self.overall[target] += 1

    @staticmethod
    def key(done: list[str]) -> tuple:
        return tuple(meaning(c) for c in done)

    def predict(self, done: list[str]) -> tuple[tuple[str, str] | None, float]:
        key = self.key(done)
        if key in self.by_done:
            return self.by_done[key].most_common(1)[0][0], float(np.mean(self.time_done[key]))
        if len(key) in self.by_count:
            return self.by_count[len(key)].most_common(1)[0][0], float(np.mean(self.time_count[len(key)]))
        times = [t for ts in self.time_count.values() for t in ts]
        return self.overall.most_common(1)[0][0], float(np.mean(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a model.kind=conditioner run folder or checkpoint")
    p.add_argument("--train", required=True, help="the conditioner's training shards (baseline statistics)")
    p.add_argument("--heldout", required=True, help="conditioner shards of held-out episodes")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--limit", type=int, default=0, help="score at most this many held-out samples (0: all)")
    args = p.parse_args(argv)

    import torch

    from wallwm_pretrain.eval.conditioner import ConditionerPlanner

    torch.manual_seed(0)
    planner = ConditionerPlanner.load(args.ckpt, args.train)
    base = Baseline(args.train)
    rows = {"conditioner": defaultdict(list), "baseline": defaultdict(list)}
    for i, s in enumerate(samples(args.heldout)):
        if args.limit and i >= args.limit:
            break
        meta = s["json"]
        truth = meaning(meta["caption"])
        pred = planner.next_event(s["observation.npy"], s["state.npy"], meta["task"], meta["done_captions"])
        guess, guess_time = base.predict(meta["done_captions"])
        for name, said, steps in (("conditioner", meaning(pred.caption), pred.remaining_steps),
                                  ("baseline", guess, guess_time)):
            r = rows[name]
            r["primitive"].append(said is not None and truth is not None and said[0] == truth[0])
            r["object"].append(said is not None and truth is not None and said[1] == truth[1])
            r["both"].append(said is not None and said == truth)
            r["parsed"].append(said is not None)
            r["time_err"].append(abs(steps - meta["remaining"]))
    n = len(rows["conditioner"]["both"])
    figures = {name: {"samples": n, "next_event_accuracy": float(np.mean(r["both"])),
                      "primitive_accuracy": float(np.mean(r["primitive"])),
                      "object_accuracy": float(np.mean(r["object"])),
                      "caption_parsed": float(np.mean(r["parsed"])),
                      "remaining_mae_steps": float(np.mean(r["time_err"]))}
               for name, r in rows.items()}
    print(f"held-out samples: {n}\n")
    print("| | next event right (primitive and object) | primitive right | object right | "
          "caption in the world's wording | remaining-time MAE (steps) |")
    print("|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['next_event_accuracy']:.1%} | {f['primitive_accuracy']:.1%} | {f['object_accuracy']:.1%} "
              f"| {f['caption_parsed']:.1%} | {f['remaining_mae_steps']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
