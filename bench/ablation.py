"""Event mode vs chunk mode on the same Meta-World demonstrations, with the same compute.

    python bench/ablation.py                      # CPU preset (about 20 minutes on 2 cores)
    python bench/ablation.py --preset gpu         # larger data, model and budget, for one GPU

One command runs the whole comparison, each step through the command a user would run:

1. ``data_tools record-metaworld``: expert demonstrations of the chosen tasks (train seed) and a
   held-out set (another seed), full 39-D state, small action noise;
2. ``data_tools build-shards``: L1 event shards (event mode) and L3 episode shards (chunk mode:
   fixed windows tiled over whole episodes, each conditioned on the task instruction);
3. equal compute: both runs take the same optimizer steps, and the chunk run's batch is scaled so
   that the expected action tokens per step (batch x mean cooked sample length, counted by
   cooking every training sample as the loader does) match the event run's; the model, seed,
   optimizer and schedule are the same;
4. ``wallwm_pretrain.train`` for each mode, then ``wallwm_pretrain.eval`` (closed loop in
   Meta-World on fresh layouts + open-loop action error on the held-out shards);
5. ``docs/ablation.md`` (side-by-side table, what was run, on which machine) and
   ``docs/ablation.png`` (success per task with 95% Wilson intervals).

Intermediate data and runs live under ``--work`` (default ``runs/ablation``). A re-run reuses the
recordings and complete shards (the slow data steps) and trains and evaluates again from
scratch; ``--fresh`` deletes everything first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    # CPU: 40 demos per task, the metaworld.yaml model (~2M parameters), 1500 steps of batch 8
    "cpu": dict(episodes=40, heldout=8, steps=1500, batch=8, eval_episodes=20, overrides=[]),
    # GPU: more demos, a wider and deeper model, a longer run
    "gpu": dict(episodes=200, heldout=20, steps=20000, batch=32, eval_episodes=50,
                overrides=["model.hidden_size=512", "model.num_layers=8", "model.num_heads=8",
                           "model.ffn_hidden_size=2048", "model.text_layers=2"]),
}
TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3"]


def run(cmd: list[str], log: Path) -> float:
    """Run a command (stdout/stderr to ``log``); returns seconds; raises naming the log on failure."""
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"command failed (exit {done.returncode}), log {log}:\n" + "\n".join(tail))
    return time.perf_counter() - started


def mean_cooked_length(shards: Path, mode: str, config: Path, overrides: list[str]) -> tuple[float, int]:
    """(mean action steps of a cooked training sample, samples) for a mode, cooked as the loader does."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.data.cookers import Normalizer
    from wallwm_pretrain.data.loader import read_cooked, read_index

    cfg = load_config(config, [f"data.shards={shards}", f"data.mode={mode}", *overrides])
    norm = Normalizer.from_index(read_index(shards))
    lengths = [s.length for s in read_cooked(shards, cfg.data, cfg.model.caption_max_bytes, norm)]
    return sum(lengths) / len(lengths), len(lengths)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores visible, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def plot(results: dict, tasks: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = tasks + ["all"]
    width = 0.38
    for i, mode in enumerate(("event", "chunk")):
        ev = results[mode]["eval"]
        cells = [ev["tasks"][t] for t in tasks] + [ev["overall"]]
        rates = [c["success_rate"] for c in cells]
        err = [[r - c["ci95"][0] for r, c in zip(rates, cells)], [c["ci95"][1] - r for r, c in zip(rates, cells)]]
        xs = [j + (i - 0.5) * width for j in range(len(labels))]
        ax.bar(xs, rates, width, yerr=err, capsize=3, label=f"{mode} mode")
    ax.set_xticks(range(len(labels)), [t.replace("-v3", "") for t in labels], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("closed-loop success (95% Wilson CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:4]))
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--episodes", type=int, help="recorded demonstrations per task (preset default)")
    p.add_argument("--steps", type=int, help="optimizer steps of each run (preset default)")
    p.add_argument("--eval-episodes", type=int, help="closed-loop episodes per task and mode (preset default)")
    p.add_argument("--work", default="runs/ablation", help="data and runs (default runs/ablation)")
    p.add_argument("--docs", default="docs", help="where ablation.md and ablation.png go (default docs)")
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--report-only", action="store_true",
                   help="only re-render docs/ablation.md and .png from <work>/ablation.json of an earlier run")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")  # optional GPU-only extensions, at import
    preset = dict(PRESETS[args.preset])
    for key in ("episodes", "steps", "eval_episodes"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    work, docs = (ROOT / args.work).resolve(), (ROOT / args.docs).resolve()
    if args.report_only:
        return write_report(json.loads((work / "ablation.json").read_text()), docs)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    py = sys.executable
    config = ROOT / "configs" / "metaworld.yaml"
    started = time.perf_counter()
    timings: dict[str, float] = {}

    # 1-2. demonstrations and shards
    for name, seed, episodes in (("train", 0, preset["episodes"]), ("heldout", 1, preset["heldout"])):
        rec = work / "demos" / name
        if not (rec / "events.jsonl").is_file():
            timings[f"record {name}"] = run(
                [py, "-m", "data_tools", "record-metaworld", "--out", str(rec), "--tasks", *args.tasks,
                 "--episodes-per-task", str(episodes), "--seed", str(seed), "--state", "full",
                 "--action-noise", "0.1", "--quiet"], work / "logs" / f"record_{name}.log")
        for level in ("L1", "L3"):
            out = work / "shards" / f"{name}_{level}"
            timings[f"shards {name} {level}"] = run(
                [py, "-m", "data_tools", "build-shards", "--src", str(rec), "--out", str(out), "--level", level,
                 "--samples-per-shard", "32", "--quiet"], work / "logs" / f"shards_{name}_{level}.log")

    # 3. equal compute: same steps, batch scaled to equal expected action tokens per step
    shards = {"event": work / "shards" / "train_L1", "chunk": work / "shards" / "train_L3"}
    heldout = {"event": work / "shards" / "heldout_L1", "chunk": work / "shards" / "heldout_L3"}
    cooked = {m: mean_cooked_length(shards[m], m, config, preset["overrides"]) for m in shards}
    batch = {"event": preset["batch"]}
    batch["chunk"] = max(1, round(preset["batch"] * cooked["event"][0] / cooked["chunk"][0]))
    for m in ("event", "chunk"):
        print(f"{m} mode: {cooked[m][1]} cooked samples of {cooked[m][0]:.2f} steps on average -> batch {batch[m]} "
              f"({batch[m] * cooked[m][0]:.0f} action tokens per step)", flush=True)

    # 4. train and evaluate both modes
    results: dict = {}
    for mode in ("event", "chunk"):
        name = f"{args.preset}_{mode}"
        overrides = [f"data.shards={shards[mode]}", f"data.mode={mode}", f"data.batch_size={batch[mode]}",
                     f"train.steps={preset['steps']}", f"train.runs_root={work / 'runs'}", f"train.run_name={name}",
                     "train.save_every=0", "train.log_every=50", "train.resume=none", *preset["overrides"]]
        shutil.rmtree(work / "runs" / name, ignore_errors=True)
        t_train = run([py, "-m", "wallwm_pretrain.train", "--config", str(config), *overrides],
                      work / "logs" / f"train_{mode}.log")
        summary = (work / "logs" / f"train_{mode}.log").read_text()
        out = work / "eval" / mode
        t_eval = run([py, "-m", "wallwm_pretrain.eval", "--ckpt", str(work / "runs" / name), "--env", "metaworld",
                      "--tasks", *args.tasks, "--episodes", str(preset["eval_episodes"]), "--seed", "0",
                      "--heldout", str(heldout[mode]), "--out", str(out), "--runs-root", str(work / "runs"),
                      "--quiet"], work / "logs" / f"eval_{mode}.log")
        last = [line for line in summary.splitlines() if line.strip().startswith("loss ")]
        results[mode] = {
            "batch": batch[mode], "mean_sample_steps": cooked[mode][0], "samples": cooked[mode][1],
            "action_tokens": preset["steps"] * batch[mode] * cooked[mode][0],
            "train_seconds": t_train, "eval_seconds": t_eval, "loss_line": last[-1].strip() if last else "",
            "eval": json.loads((out / "results.json").read_text()),
        }
    results["preset"], results["tasks"], results["machine"] = args.preset, args.tasks, machine()
    results["total_seconds"] = time.perf_counter() - started
    results["recorded_now"] = any(k.startswith("record") for k in timings)
    results["record_seconds"] = {name: recorder_seconds(work / "logs" / f"record_{name}.log") for name in ("train", "heldout")}
    results["settings"] = preset
    results["command"] = " ".join(["python bench/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    (work / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    return write_report(results, docs)


def recorder_seconds(log: Path) -> float | None:
    """Seconds the recorder reported in its summary line ("... in 145.0 s ...")."""
    import re

    found = re.search(r" in ([0-9.]+) s \(", log.read_text()) if log.is_file() else None
    return float(found.group(1)) if found else None


def write_report(results: dict, docs: Path) -> int:
    """5. the table (docs/ablation.md) and the plot (docs/ablation.png)."""
    docs.mkdir(parents=True, exist_ok=True)
    plot(results, results["tasks"], docs / "ablation.png")
    (docs / "ablation.md").write_text(render(results, results["tasks"]))
    print((docs / "ablation.md").read_text())
    return 0


def render(results: dict, tasks: list[str]) -> str:
    from wallwm_pretrain.eval.report import markdown_table, rate_cell

    ev, ch = results["event"], results["chunk"]
    s = results["settings"]
    rows = []
    for task in tasks:
        rows.append([f"success: {task}"] + [rate_cell(r["eval"]["tasks"][task]["successes"], r["eval"]["tasks"][task]["episodes"]) for r in (ev, ch)])
    rows.append(["success: all tasks"] + [rate_cell(r["eval"]["overall"]["successes"], r["eval"]["overall"]["episodes"]) for r in (ev, ch)])
    rows.append(["mean steps per episode (budget 200)"] + [
        f"{sum(r['eval']['tasks'][t]['mean_steps'] for t in tasks) / len(tasks):.0f}" for r in (ev, ch)])
    for key, label in (("action_mse_normalised", "open-loop action MSE (normalised, held-out)"),
                       ("action_mae", "open-loop action MAE (robot units, held-out)")):
        rows.append([label] + [f"{r['eval']['open_loop'][key]:.4f}" for r in (ev, ch)])
    rows.append(["held-out samples scored"] + [f"{r['eval']['open_loop']['samples']}" for r in (ev, ch)])
    rows.append(["remaining-time MAE (steps, held-out events)", f"{ev['eval']['open_loop']['remaining_steps_mae']:.1f}", "not used"])
    rows.append(["training samples (cooked)"] + [f"{r['samples']}" for r in (ev, ch)])
    rows.append(["batch x steps"] + [f"{r['batch']} x {s['steps']}" for r in (ev, ch)])
    rows.append(["mean action steps per sample"] + [f"{r['mean_sample_steps']:.2f}" for r in (ev, ch)])
    rows.append(["expected action tokens seen"] + [f"{r['action_tokens']:,.0f}" for r in (ev, ch)])
    rows.append(["training / evaluation time"] + [f"{r['train_seconds'] / 60:.1f} / {r['eval_seconds'] / 60:.1f} min" for r in (ev, ch)])
    table = markdown_table(["", "event mode", "chunk mode"], rows)
    rec = results.get("record_seconds") or {}
    rec_text = " and ".join(f"{rec[k]:.0f} s for the {k} set" for k in ("train", "heldout") if rec.get(k))
    when = (f"including recording the demonstrations ({rec_text})" if results.get("recorded_now")
            else f"reusing demonstrations recorded by an earlier invocation (recording took {rec_text})")
    oe, oc = ev["eval"]["overall"], ch["eval"]["overall"]
    diff = oe["success_rate"] - oc["success_rate"]
    overlap = oe["ci95"][0] <= oc["ci95"][1] and oc["ci95"][0] <= oe["ci95"][1]
    verdict = ("the two 95% intervals overlap: at this scale the run does not separate the modes"
               if overlap else "the two 95% intervals do not overlap")
    return f"""# Event mode vs chunk mode (Meta-World)

Produced by `{results['command']}` (preset `{results['preset']}`) in {results['total_seconds'] / 60:.0f} min,
{when}, on {results['machine']}.

Overall closed-loop success: event mode {oe['success_rate']:.0%}, chunk mode {oc['success_rate']:.0%}
(difference {diff * 100:+.0f} points); {verdict}.

![success per task](ablation.png)

{table}

## What was run

- Data: `data_tools record-metaworld` with Meta-World's own scripted experts for {', '.join(tasks)}:
  {s['episodes']} demonstrations per task (seed 0) for training and {s['heldout']} per task (seed 1) held out;
  full 39-D state, action noise 0.1, cameras corner + gripperPOV at 64 px, area-resized to 32 px in the shards.
- Event mode: one sample per L1 event (reach, descend, grasp, transport, pull, press), conditioned on the
  event's caption; at evaluation the policy walks the task's event script and executes as many denoised
  steps as the remaining-time head predicts (at most `data.max_frames` = 48 per plan).
- Chunk mode: windows of `data.chunk_horizon` = 16 steps tiled over whole episodes (L3 shards), each
  conditioned on the task instruction; at evaluation it executes every chunk in full.
- Same model (`configs/metaworld.yaml`{' + ' + ' '.join(s['overrides']) if s['overrides'] else ''}), optimizer,
  schedule, seed and number of steps; the chunk run's batch is scaled so that batch x mean sample length
  (action tokens per step, cooked as the loader cooks them) matches the event run's.
- Closed loop: {s['eval_episodes']} episodes per task and mode on fresh layouts (evaluation seeds differ from
  the recording seeds), budget 200 steps, 10 Euler steps per plan; success is Meta-World's own `success`
  flag. Intervals are 95% Wilson intervals over episodes.
- Open loop: every held-out sample (L1 events for event mode, 16-step windows of held-out episodes for
  chunk mode) denoised from its first frame, state and caption and compared with the recorded actions.
  The two modes are scored on different units (events vs windows), so compare these numbers with care.

One training seed per mode: the intervals cover episode-to-episode variation only, not
run-to-run variation of training.
"""


if __name__ == "__main__":
    sys.exit(main())
