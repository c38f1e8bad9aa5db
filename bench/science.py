"""Does event grounding help? Event vs chunk vs unified mode, with training seeds, held-out tasks and predicted events.

    python bench/science.py                          # CPU preset: 3 seeds, both splits (a few hours on 2 cores)
    python bench/science.py --preset gpu             # larger model, data and budget on one GPU
    python bench/science.py --slurm --sbatch-args "--partition=gpu --gres=gpu:1"   # arms as a Slurm array job
    python bench/science.py --preset test            # the smallest setting: 1 seed, 1 task each way, a few steps

The arms (the same shards, training seeds, model, optimizer steps and evaluation episodes):

- ``chunk``: chunk mode, fixed windows of ``data.chunk_horizon`` steps conditioned on the task;
- ``event_script``: event mode, each next event from the task's event script;
- ``event_predicted``: the same event-mode towers, each next event chosen by a text conditioner
  (trained per seed on the same events, ``model.kind=conditioner``);
- ``unified``: unified mode (history windows across event boundaries), atomic context.

The splits: **seen** tasks (the training tasks, evaluated on fresh layouts) and **held-out**
tasks, never trained on, whose events all occur in the training tasks (checked before anything
runs: :data:`SPLIT`). Held-out tasks also get the open-loop action error on recorded expert
demonstrations, which tells the arms apart even where no arm succeeds.

Equal compute: every arm takes the same optimizer steps on the same model; the batch of each
mode is scaled so that the expected action tokens per step (batch x mean cooked sample length,
cooked as the loader cooks) match event mode's. The conditioner of ``event_predicted`` is a
separate model trained on top (its steps and size are reported beside the table).

Every step is the command a user runs (``data_tools record-metaworld``, ``build-shards``,
``build-episodes``, ``build-conditioner``, ``embed-captions``, ``wallwm_pretrain.train``,
``wallwm_pretrain.eval``); training and evaluation runs go to the MLflow store under
``<work>/runs``. The report (``docs/science.md``, ``docs/science.png``) gives each arm's success
with a hierarchical-bootstrap interval over seeds then episodes, and the paired differences to
chunk mode (``bench/science_stats.py``). A re-run reuses recordings, shards and finished jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ablation import machine, mean_cooked_length, run

ROOT = Path(__file__).resolve().parents[1]

# The leave-tasks-out split (10 training, 5 held-out tasks, in the spirit of Meta-World's ML10),
# fixed before any result was seen: every L1 primitive of a held-out task occurs in some training
# task (reach, descend, grasp, transport, push, pull, press); the held-out tasks add walls, new
# objects (a mug, a press handle) and, for button-press-wall, an order of events (descend, then
# press) that no training task has.
SPLIT = {
    "train": ["pick-place-v3", "push-v3", "reach-v3", "drawer-open-v3", "drawer-close-v3", "button-press-topdown-v3",
              "button-press-v3", "door-open-v3", "window-open-v3", "plate-slide-v3"],
    "heldout": ["pick-place-wall-v3", "window-close-v3", "button-press-wall-v3", "coffee-push-v3", "handle-press-v3"],
}

PRESETS = {
    # CPU: the metaworld.yaml model (~2M parameters), 1500 steps, 10 closed-loop episodes per task
    "cpu": dict(seeds=[0, 1, 2], episodes=30, heldout=6, steps=1500, batch=8, eval_episodes=10, max_steps=200,
                overrides=[]),
    "gpu": dict(seeds=[0, 1, 2, 3, 4], episodes=200, heldout=20, steps=20000, batch=32, eval_episodes=50,
                max_steps=200, overrides=["model.hidden_size=512", "model.num_layers=8", "model.num_heads=8",
                                          "model.ffn_hidden_size=2048", "model.text_layers=2"]),
    # the smallest setting, run by the test suite so the pipeline cannot rot (not a result)
    "test": dict(seeds=[0], episodes=2, heldout=1, steps=2, batch=2, eval_episodes=1, max_steps=6, overrides=[],
                 train=["drawer-open-v3"], heldout_tasks=["door-open-v3"]),
}
ARMS = ["chunk", "event_script", "event_predicted", "unified"]
JOBS = ["event", "chunk", "unified"]   # trainings per seed; the event job evaluates both event arms
DATA = {"event": "L1", "chunk": "L3", "unified": "episodes"}
EVAL_SEED = 100                        # layouts of the closed loop (recordings use seeds 0-2)
SPLIT_SEEDS = {"train": 0, "heldout": 1}


def check_split(train: list[str], heldout: list[str]) -> None:
    """Refuse a split whose held-out tasks are trained on or hold an event no training task has."""
    from sim.metaworld.tasks import get_spec

    seen = {p for t in train for p in get_spec(t).primitives}
    for task in heldout:
        if task in train:
            raise SystemExit(f"held-out task {task} is also a training task")
        new = [p for p in get_spec(task).primitives if p not in seen]
        if new:
            raise SystemExit(f"held-out task {task} has the event {new[0]!r}, which no training task has")


class Science:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args, self.argv = args, argv
        self.preset = dict(PRESETS[args.preset])
        for key in ("steps", "eval_episodes", "episodes"):
            if getattr(args, key) is not None:
                self.preset[key] = getattr(args, key)
        self.seeds = args.seeds if args.seeds is not None else self.preset["seeds"]
        self.train_tasks = args.train_tasks or self.preset.get("train", SPLIT["train"])
        self.heldout_tasks = args.heldout_tasks or self.preset.get("heldout_tasks", SPLIT["heldout"])
        check_split(self.train_tasks, self.heldout_tasks)
        self.work = (ROOT / args.work).resolve()
        self.docs = (ROOT / args.docs).resolve()
        self.py = sys.executable
        self.config = ROOT / "configs" / "metaworld.yaml"
        self.logs = self.work / "logs"

    # ---- 1. data: recordings, shards, tiny frozen models, equal-compute batches ----------------
    def data(self) -> dict:
        plan_file = self.work / "plan.json"
        if plan_file.is_file():
            return json.loads(plan_file.read_text())
        self.logs.mkdir(parents=True, exist_ok=True)
        p, w = self.preset, self.work
        for name, tasks, episodes in (("train", self.train_tasks, p["episodes"]),
                                      ("heldout", self.heldout_tasks, p["heldout"])):
            rec = w / "demos" / name
            if not (rec / "events.jsonl").is_file():
                run([self.py, "-m", "data_tools", "record-metaworld", "--out", str(rec), "--tasks", *tasks,
                     "--episodes-per-task", str(episodes), "--seed", str(SPLIT_SEEDS[name]), "--state", "full",
                     "--action-noise", "0.1", "--quiet"], self.logs / f"record_{name}.log")
            for level in ("L1", "L3"):
                run([self.py, "-m", "data_tools", "build-shards", "--src", str(rec), "--out", str(w / name / level),
                     "--level", level, "--samples-per-shard", "32", "--quiet"], self.logs / f"shards_{name}_{level}.log")
            if not (w / name / "episodes" / "index.json").is_file():
                run([self.py, "-m", "data_tools", "build-episodes", "--shards", str(w / name / "L1"),
                     "--out", str(w / name / "episodes"), "--quiet"], self.logs / f"episodes_{name}.log")
        run([self.py, "-m", "wallwm_pretrain.convert", "make-tiny", "--out", str(w / "models"), "--seed", "0"],
            self.logs / "make_tiny.log")
        if not (w / "train" / "conditioner" / "index.json").is_file():
            run([self.py, "-m", "data_tools", "build-conditioner", "--src", str(w / "train" / "L1"),
                 "--out", str(w / "train" / "conditioner"), "--per-event", "3", "--samples-per-shard", "128",
                 "--quiet"], self.logs / "conditioner_shards.log")
        run([self.py, "-m", "data_tools", "embed-captions", "--shards", str(w / "train" / "conditioner"),
             "--text-encoder", str(w / "models" / "text_encoder")], self.logs / "embed_captions.log")
        # equal compute: the same steps; batches scaled to event mode's action tokens per step
        cooked = {job: mean_cooked_length(w / "train" / DATA[job], job, self.config, p["overrides"]) for job in JOBS}
        batch = {job: max(1, round(p["batch"] * cooked["event"][0] / cooked[job][0])) for job in JOBS}
        plan = {"batch": batch, "mean_sample_steps": {j: cooked[j][0] for j in JOBS},
                "samples": {j: cooked[j][1] for j in JOBS}}
        plan_file.write_text(json.dumps(plan, indent=1) + "\n")
        return plan

    # ---- 2. one job: train one mode at one seed and evaluate it on both splits ------------------
    def job(self, index: int, plan: dict) -> Path:
        seed, kind = self.seeds[index // len(JOBS)], JOBS[index % len(JOBS)]
        out = self.work / "results" / f"{kind}_seed{seed}.json"
        if out.is_file():
            return out
        p, w = self.preset, self.work
        started = time.perf_counter()
        name = f"{kind}_seed{seed}"
        common = [f"train.steps={p['steps']}", f"train.seed={seed}", f"train.runs_root={w / 'runs'}",
                  "train.save_every=0", f"train.log_every={max(1, p['steps'] // 10)}", "train.resume=none"]
        shutil.rmtree(w / "runs" / name, ignore_errors=True)
        run([self.py, "-m", "wallwm_pretrain.train", "--config", str(self.config), *common,
             f"data.shards={w / 'train' / DATA[kind]}", f"data.mode={kind}", f"data.batch_size={plan['batch'][kind]}",
             f"train.run_name={name}", *p["overrides"]], self.logs / f"train_{name}.log")
        ways: list[str] = []
        if kind == "event":  # the conditioner that predicts the next event, same seed and steps
            cond = f"conditioner_seed{seed}"
            shutil.rmtree(w / "runs" / cond, ignore_errors=True)
            run([self.py, "-m", "wallwm_pretrain.train", "--config", str(ROOT / "configs" / "smoke_conditioner.yaml"),
                 *common, f"data.shards={w / 'train' / 'conditioner'}", f"train.run_name={cond}",
                 f"model.conditioner.vlm={w / 'models' / 'vlm'}", "model.conditioner.caption_tokens=32",
                 "model.conditioner.align_tokens=32"], self.logs / f"train_{cond}.log")
            ways = ["--events", "script", "predicted", "--conditioner", str(w / "runs" / cond)]
        elif kind == "unified":
            ways = ["--context", "atomic"]
        # one evaluation over both splits (the same layouts for every arm and seed); the open-loop
        # action error on the held-out tasks' recorded demonstrations
        ev = w / "eval" / name
        run([self.py, "-m", "wallwm_pretrain.eval", "--ckpt", str(w / "runs" / name), "--env", "metaworld",
             "--tasks", *self.train_tasks, *self.heldout_tasks, "--episodes", str(p["eval_episodes"]),
             "--seed", str(EVAL_SEED), "--max-steps", str(p["max_steps"]), "--heldout", str(w / "heldout" / DATA[kind]),
             "--out", str(ev), "--runs-root", str(w / "runs"), "--threads", str(self.args.threads), "--quiet", *ways],
            self.logs / f"eval_{name}.log")
        res = json.loads((ev / "results.json").read_text())
        by_way = res.get("events") or res.get("contexts") or {"": {"tasks": res["tasks"]}}
        arm = {"chunk": lambda way: "chunk", "unified": lambda way: "unified", "event": lambda way: f"event_{way}"}[kind]
        result: dict = {"kind": kind, "seed": seed, "open_loop": res["open_loop"], "splits": {
            split: {arm(way): {t: by["tasks"][t]["success_per_episode"] for t in tasks} for way, by in by_way.items()}
            for split, tasks in (("seen", self.train_tasks), ("heldout", self.heldout_tasks))}}
        result["seconds"] = time.perf_counter() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        return out

    # ---- 3. the report ------------------------------------------------------------------------
    def report(self, plan: dict) -> int:
        from science_report import write_report

        jobs = [json.loads((self.work / "results" / f"{k}_seed{s}.json").read_text())
                for s in self.seeds for k in JOBS]
        meta = {"command": "python bench/science.py " + " ".join(shlex.quote(a) for a in self.argv),
                "preset": self.args.preset, "settings": self.preset, "seeds": self.seeds, "plan": plan,
                "train_tasks": self.train_tasks, "heldout_tasks": self.heldout_tasks, "machine": machine(),
                "commit": _commit(), "eval_seed": EVAL_SEED, "runs": str(self.work / "runs")}
        return write_report(jobs, meta, self.docs, self.work)

    # ---- local or Slurm -----------------------------------------------------------------------
    def all_local(self) -> int:
        plan = self.data()
        for index in range(len(self.seeds) * len(JOBS)):
            self.job(index, plan)
        return self.report(plan)

    def submit(self) -> int:
        """Three sbatch submissions: the data, an array of one job per (seed, mode), the report."""
        base = [a for a in self.argv if a not in ("--slurm",)]
        extra = shlex.split(self.args.sbatch_args or "")
        script = ["python" if not self.py else self.py, str(Path(__file__).resolve()), *base]
        self.logs.mkdir(parents=True, exist_ok=True)

        def sbatch(name: str, phase: list[str], *opts: str) -> str:
            cmd = ["sbatch", "--parsable", f"--job-name=science-{name}", f"--output={self.logs}/slurm-%x-%A_%a.out",
                   *extra, *opts, "--wrap", shlex.join([*script, *phase])]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"sbatch failed: {done.stderr.strip()}")
            return done.stdout.strip().split(";")[0]

        data = sbatch("data", ["--phase", "data"])
        array = sbatch("arms", ["--phase", "job"], f"--array=0-{len(self.seeds) * len(JOBS) - 1}",
                       f"--dependency=afterok:{data}")
        report = sbatch("report", ["--phase", "report"], f"--dependency=afterok:{array}")
        print(f"data: job {data}\narms: array job {array} ({len(self.seeds)} seeds x {len(JOBS)} modes, "
              f"after {data})\nreport: job {report} (after {array}) writes {self.docs / 'science.md'}")
        return 0


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.splitlines()
    p = argparse.ArgumentParser(description=doc[0], epilog="\n".join(doc[2:6]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="sizes of data, model and budget")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (preset default; at least 3 for a result)")
    p.add_argument("--train-tasks", nargs="+", help=f"training tasks (default {' '.join(SPLIT['train'])})")
    p.add_argument("--heldout-tasks", nargs="+", help=f"held-out tasks (default {' '.join(SPLIT['heldout'])})")
    p.add_argument("--episodes", type=int, help="recorded demonstrations per training task (preset default)")
    p.add_argument("--steps", type=int, help="optimizer steps of every training run (preset default)")
    p.add_argument("--eval-episodes", type=int, help="closed-loop episodes per task, arm and seed (preset default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each evaluation (default 1)")
    p.add_argument("--work", default="runs/science", help="data, runs and results (default runs/science)")
    p.add_argument("--docs", default="docs", help="where science.md and science.png go (default docs)")
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--slurm", action="store_true", help="submit the data, the arms (an array job) and the report "
                   "to Slurm instead of running them here")
    p.add_argument("--sbatch-args", help="extra sbatch options for every job, e.g. \"--partition=gpu --gres=gpu:1\"")
    p.add_argument("--phase", choices=["data", "job", "report"], help=argparse.SUPPRESS)  # set by --slurm's jobs
    p.add_argument("--job-index", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    science = Science(args, [a for a in argv if a not in ("--fresh",)])
    if args.fresh and not args.phase and science.work.exists():
        shutil.rmtree(science.work)
    if args.slurm:
        return science.submit()
    if args.phase == "data":
        science.data()
        return 0
    if args.phase == "job":
        index = args.job_index if args.job_index is not None else int(os.environ["SLURM_ARRAY_TASK_ID"])
        science.job(index, science.data())
        return 0
    if args.phase == "report":
        return science.report(science.data())
    return science.all_local()


if __name__ == "__main__":
    sys.exit(main())
