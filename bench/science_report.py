"""docs/science.md and docs/science.png from the per-job results of ``bench/science.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from science_stats import Estimate, outcome_array, paired_difference, success

ARM_NAMES = {"chunk": "chunk mode", "event_script": "event mode, scripted events",
             "event_predicted": "event mode, predicted events", "unified": "unified mode, atomic context"}
SPLIT_NAMES = {"seen": "seen tasks, new layouts", "heldout": "held-out tasks"}


def collect(jobs: list[dict], seeds: list[int]) -> dict:
    """``{split: {arm: [{task: [success per episode]} per seed]}}`` and the open-loop errors per arm."""
    by_seed = {(j["kind"], j["seed"]): j for j in jobs}
    out: dict = {}
    for split in SPLIT_NAMES:
        arms: dict[str, list] = {}
        loop: dict[str, list] = {}
        for seed in seeds:
            for kind in ("chunk", "event", "unified"):
                job = by_seed[(kind, seed)]
                for arm, outcomes in job["splits"][split].items():
                    arms.setdefault(arm, []).append(outcomes)
                    loop.setdefault(arm, []).append(job["open_loop"])
        out[split] = {"arms": arms, "open_loop": loop}
    return out


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def analyse(collected: dict, tasks: dict[str, list[str]]) -> dict:
    """Every arm's estimate and every arm's paired difference to chunk mode, per split."""
    result: dict = {}
    for split, part in collected.items():
        arrays = {arm: outcome_array(per_seed, tasks[split]) for arm, per_seed in part["arms"].items()}
        est = {arm: success(a) for arm, a in arrays.items()}
        diffs = {arm: paired_difference(a, arrays["chunk"]) for arm, a in arrays.items() if arm != "chunk"}
        if "event_script" in arrays and "event_predicted" in arrays:
            diffs["event_predicted - event_script"] = paired_difference(arrays["event_predicted"], arrays["event_script"])
        per_task = {arm: {t: float(a[:, i].mean()) for i, t in enumerate(tasks[split])} for arm, a in arrays.items()}
        result[split] = {"success": est, "difference": diffs, "per_task": per_task,
                         "episodes": {arm: int(a[0].size) for arm, a in arrays.items()}}
    return result


def verdict(diff: Estimate) -> str:
    """Plain words for event - chunk: the direction, and whether the 95% interval excludes zero."""
    if diff.low > 0:
        return f"event mode is better than chunk mode (95% interval above zero; {diff.above_zero:.1%} of replicates > 0)"
    if diff.high < 0:
        return f"chunk mode is better than event mode (95% interval below zero; {diff.above_zero:.1%} of replicates > 0)"
    lean = "event" if diff.mean > 0 else "chunk" if diff.mean < 0 else "neither"
    return (f"not separated: the 95% interval [{_pts(diff.low)}, {_pts(diff.high)}] points contains zero "
            f"(leaning {lean}; {diff.above_zero:.1%} of replicates > 0)")


def render(analysis: dict, collected: dict, meta: dict) -> str:
    from wallwm_pretrain.eval.report import markdown_table

    seeds = meta["seeds"]
    s = meta["settings"]
    parts = [f"""# Does event grounding help? Event vs chunk vs unified mode (Meta-World)

Produced by `{meta['command']}` (preset `{meta['preset']}`) on commit `{meta['commit']}`, on {meta['machine']};
its training and evaluation jobs took {meta['hours']:.1f} h in all (data preparation not counted). Training seeds: {', '.join(map(str, seeds))}. Every run (training and evaluation) is in
the MLflow store of `{meta['runs']}`.

![success per arm and split](science.png)
"""]
    for split, name in SPLIT_NAMES.items():
        a, part = analysis[split], collected[split]
        diff = a["difference"].get("event_script")
        parts.append(f"## {name[0].upper() + name[1:]}\n")
        if diff is not None:
            parts.append(f"Event mode (scripted events) minus chunk mode: **{_pts(diff.mean)} points** "
                         f"[{_pts(diff.low)}, {_pts(diff.high)}]: {verdict(diff)}.\n")
        held = split == "heldout"  # the open-loop error is measured on the held-out tasks' demonstrations
        rows = []
        for arm, est in a["success"].items():
            row = [ARM_NAMES.get(arm, arm), f"{_pct(est.mean)} [{_pct(est.low)}, {_pct(est.high)}]",
                   " / ".join(_pct(x) for x in est.per_seed), f"{a['episodes'][arm]}"]
            if held:
                loop = part["open_loop"][arm]
                row += [f"{np.mean([x['action_mse_normalised'] for x in loop]):.4f}",
                        f"{np.mean([x['action_mae'] for x in loop]):.4f}"]
            rows.append(row)
        head = ["arm", "success, mean over seeds [95% CI]", "per seed", "episodes per seed"]
        head += ["open-loop action MSE (normalised)", "open-loop action MAE (robot units)"] if held else []
        parts.append(markdown_table(head, rows) + "\n")
        drows = [[f"{ARM_NAMES.get(arm, arm)} - chunk mode" if " - " not in arm else arm,
                  f"{_pts(d.mean)} [{_pts(d.low)}, {_pts(d.high)}]", f"{d.above_zero:.1%}",
                  " / ".join(_pts(x) for x in d.per_seed)] for arm, d in a["difference"].items()]
        parts.append(markdown_table(["paired difference", "points [95% CI]", "replicates > 0", "per seed"], drows) + "\n")
        trows = [[t] + [_pct(a["per_task"][arm][t]) for arm in a["success"]] for t in meta["tasks"][split]]
        parts.append(markdown_table(["task (mean over seeds and episodes)"] + [ARM_NAMES.get(x, x) for x in a["success"]],
                                    trows) + "\n")
    parts.append(f"""## What was run

- Tasks: training {', '.join(meta['train_tasks'])}; held-out {', '.join(meta['heldout_tasks'])} (never trained
  on; each of their events occurs in a training task, checked by `check_split`). The split was fixed in
  `bench/science.py` before any result was seen.
- Data: `data_tools record-metaworld` expert demonstrations, full 39-D state, action noise 0.1:
  {s['episodes']} per training task (recording seed 0), and {s['heldout']} per held-out task (seed 1) for the
  open-loop action error only (means over seeds in the held-out table). L1 event shards (event mode),
  L3 episode shards (chunk mode), `build-episodes` (unified mode), `build-conditioner` + `embed-captions`
  (the conditioner of the predicted-events arm).
- Equal compute: the same model (`configs/metaworld.yaml`{(' + ' + ' '.join(s['overrides'])) if s['overrides'] else ''}),
  optimizer, schedule and {s['steps']} optimizer steps for every mode; batches {meta['plan']['batch']} so that
  batch x mean cooked sample length (action steps per sample: {', '.join(f"{k} {v:.1f}" for k, v in meta['plan']['mean_sample_steps'].items())})
  is the same action tokens per step. The predicted-events arm adds a conditioner (`configs/smoke_conditioner.yaml`
  on make-tiny's frozen random VLM, the same steps and seed) that chooses each next event from the cameras.
- Closed loop: {s['eval_episodes']} episodes per task, arm and seed on the same layouts (evaluation seed
  {meta['eval_seed']}), budget {s['max_steps']} steps; success is Meta-World's own flag.
- Intervals: hierarchical bootstrap (10,000 replicates): training seeds drawn with replacement, then each
  drawn seed's episodes within every task; 2.5 / 97.5 percentiles (`bench/science_stats.py`). Paired
  differences use the same seed and episode draws for both arms, which are evaluated on the same layouts.
- Open loop: the held-out tasks' recorded demonstrations, denoised from their first frame, state and caption
  (L1 events for event mode, 16-step windows for chunk and unified mode): the units differ between modes,
  so compare these numbers with care.
""")
    if len(seeds) < 3:
        parts.append(f"Only {len(seeds)} training seed(s): this is a pipeline check, not a result.\n")
    return "\n".join(parts)


def plot(analysis: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SPLIT_NAMES), sharey=True)
    for ax, (split, name) in zip(np.atleast_1d(axes), SPLIT_NAMES.items()):
        est = analysis[split]["success"]
        arms = list(est)
        means = [est[a].mean for a in arms]
        err = [[est[a].mean - est[a].low for a in arms], [est[a].high - est[a].mean for a in arms]]
        ax.bar(range(len(arms)), means, yerr=err, capsize=3, color="#9bb7d4")
        for i, a in enumerate(arms):
            ax.plot([i] * len(est[a].per_seed), est[a].per_seed, "k.", ms=4)
        ax.set_xticks(range(len(arms)), [ARM_NAMES[a].replace(", ", "\n") for a in arms], fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.05)
    np.atleast_1d(axes)[0].set_ylabel("success (mean over seeds, 95% CI;\ndots: seeds)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plain(analysis: dict) -> dict:
    return {split: {k: ({arm: vars(e) for arm, e in v.items()} if k in ("success", "difference") else v)
                    for k, v in part.items()} for split, part in analysis.items()}


def log_to_mlflow(analysis: dict, meta: dict, files: list[Path]) -> str:
    from wallwm_pretrain.tracking import MLflowTracker, default_store

    uri, artifacts = default_store(meta["runs"])
    tracker = MLflowTracker(uri, "science", "science-report", artifact_location=artifacts, tags={"wallwm.commit": meta["commit"]})
    with tracker:
        tracker.log_params({"command": meta["command"], "seeds": " ".join(map(str, meta["seeds"])),
                            "train_tasks": " ".join(meta["train_tasks"]), "heldout_tasks": " ".join(meta["heldout_tasks"])})
        metrics = {}
        for split, part in analysis.items():
            for arm, e in part["success"].items():
                metrics.update({f"{split}/{arm}/success": e.mean, f"{split}/{arm}/ci_low": e.low, f"{split}/{arm}/ci_high": e.high})
            for arm, d in part["difference"].items():
                key = arm.replace(" - ", "_minus_") if " - " in arm else f"{arm}_minus_chunk"
                metrics.update({f"{split}/{key}": d.mean, f"{split}/{key}/ci_low": d.low, f"{split}/{key}/ci_high": d.high})
        tracker.log_metrics(metrics, 0)
        for f in files:
            tracker.log_artifact(f)
    return tracker.run_id


def write_report(jobs: list[dict], meta: dict, docs: Path, work: Path) -> int:
    meta = dict(meta, tasks={"seen": meta["train_tasks"], "heldout": meta["heldout_tasks"]},
                hours=sum(j["seconds"] for j in jobs) / 3600)
    collected = collect(jobs, meta["seeds"])
    analysis = analyse(collected, meta["tasks"])
    docs.mkdir(parents=True, exist_ok=True)
    plot(analysis, docs / "science.png")
    (docs / "science.md").write_text(render(analysis, collected, meta))
    summary = work / "science.json"
    summary.write_text(json.dumps({"meta": meta, "analysis": _plain(analysis), "jobs": jobs}, indent=1) + "\n")
    run_id = log_to_mlflow(analysis, meta, [docs / "science.md", docs / "science.png", summary])
    print((docs / "science.md").read_text())
    print(f"MLflow run {run_id} (experiment 'science') in {meta['runs']}")
    return 0
