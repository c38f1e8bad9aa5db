# wallwm-pretrain
#   make smoke-test   install what is needed, then synth data -> shards -> train -> resume
#   make test         install what is needed, then run the whole test suite
#   make smoke-wan    the real-model path on CPU: synth -> shards -> tiny random Wan/VAE/UMT5 ->
#                     encode-latents -> embed-captions -> convert wan -> train -> resume
#   make smoke-conditioner  the text conditioner on CPU: smoke shards -> conditioner shards ->
#                     caption states (tiny UMT5) -> train the heads on the tiny random Qwen3.5 VLM ->
#                     next-event accuracy on held-out episodes against a baseline
#   make smoke-unified unified mode on CPU: episode shards -> window clusters -> fixed chunks with the
#                     three text contexts from the smoke, conditioner and Staircase runs -> one chunk each
#   make recipe-smoke the training recipe on CPU (configs/recipes/smoke.yaml): video stage -> action stage
#                     from its weights -> conditioner heads -> Staircase branch -> unified-mode next-chunk
#                     stage from stages 2-4; rerun resumes an interrupted stage, skips
#                     finished ones, and prints the summary table
#   make ablation     Meta-World event mode vs chunk mode (bench/ablation.py), table in docs/
#   make science      event vs chunk vs unified mode with 3 seeds and held-out tasks (bench/science.py), docs/science.md
#   make gpu-wheels   the offline wheelhouse for a GPU machine with no package registry (.gpu/wheels,
#                     bench/gpu_wheels.py; pins: setup.cfg and bench/gpu_wheels.txt)
#   make gpu-check    the first GPU figures in one prepared run (bench/gpu_check.sh; see docs/benchmarks.md):
#                     smoke runs on cuda:0 in bf16, the attention kernel, MFU with AdamW and Muon,
#                     Wan-tower denoising latency, peak memory against the planner
#   make fuzz         the long mutation fuzz of the input readers (bench/fuzz_readers.py, docs/fuzzing.md)
#   make mutation     mutation testing of core modules (cosmic-ray; long, not part of make test):
#                     make mutation MUTATE="captions balance"   (names of mutation/*.toml)
#
# Environment: by default everything goes into ./.venv (created with --system-site-packages,
# so a CUDA torch that the cluster or the user already installed is seen and never replaced;
# torch==2.13.0, the CPU build, is installed only when no torch is importable).
# An environment that already holds the dependencies is used as it is, with no install:
#   make test PYTHON=python3          (any interpreter; fails naming what is missing)
# and when plain python3 already has everything, it is picked automatically.
# ENVCHECK=--train checks only what training needs (no test tools, no data_tools extras), for the
# smoke-train and smoke-wan-train targets on a machine that received its packages as wheels.

SYS_PYTHON ?= python3
VENV       ?= .venv
ifndef PYTHON
  ifeq ($(shell $(SYS_PYTHON) -m wallwm_pretrain.envcheck --tests >/dev/null 2>&1 && echo ok),ok)
    PYTHON := $(SYS_PYTHON)
  endif
endif
ifdef PYTHON
  READY := check-env
else
  PYTHON := $(VENV)/bin/python
  READY := $(VENV)/.installed
endif

SMOKE_SYNTH  ?= data/synth/smoke
SMOKE_SHARDS ?= data/shards/smoke
SMOKE_EPISODES ?= 48
SMOKE_STATIC ?= data/shards/smoke-static
SMOKE_EPISODE_SHARDS ?= data/shards/smoke-episodes
SMOKE_STATIC_THRESHOLD ?= 1.0
WAN_SYNTH   ?= data/synth/smoke-wan
WAN_SHARDS  ?= data/shards/smoke-wan
WAN_MODELS  ?= data/models/tiny-wan
WAN_INIT    ?= data/models/smoke-wan-init
COND_SHARDS   ?= data/shards/smoke-cond
COND_HELDOUT  ?= data/synth/heldout
COND_HELDOUT_SHARDS ?= data/shards/heldout
FUZZ_CASES ?= 20000
FUZZ_SEED  ?= 1

ENVCHECK   ?= --tests
RUNS       ?= runs
# extra key=value overrides of the smoke runs (e.g. train.device=cuda train.precision=bf16) and
# the step at which their first invocation stops before the resume
SMOKE_ARGS ?=
SMOKE_STOP ?= 200
WAN_ARGS   ?=
WAN_STOP   ?= 20
WAN_EPISODES ?= 12
GPU_WHEELS ?= .gpu/wheels

export MLFLOW_DISABLE_TELEMETRY ?= true
export PYTHONUNBUFFERED := 1

.PHONY: install check-env slurm-deps test smoke-test smoke-train smoke-data smoke-wan wan-data smoke-wan-train gpu-wheels gpu-check smoke-conditioner smoke-unified recipe-smoke ablation science fuzz mutation clean

install: $(READY)

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	if $(VENV)/bin/python -c "import torch" 2>/dev/null; then extras=dev; else extras=dev,cpu; fi; \
	  $(VENV)/bin/python -m pip install --quiet -e ".[$$extras]"
	$(VENV)/bin/python -m wallwm_pretrain.envcheck --tests
	touch $@

check-env:
	$(PYTHON) -m wallwm_pretrain.envcheck $(ENVCHECK)

# The Slurm tests (tests/slurm) start a real Slurm; install its Debian packages when missing.
# Without root or apt-get nothing is installed and those tests skip, saying why.
SLURM_PKGS := munge slurmctld slurmd slurm-client
slurm-deps:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SLURM_PKGS) for the Slurm tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_PKGS) >/dev/null) \
	    || echo "note: apt-get could not install $(SLURM_PKGS); the Slurm tests will skip"; \
	else echo "note: Slurm is not installed and this is not root with apt-get; the Slurm tests will skip"; fi

test: $(READY) slurm-deps
	$(PYTHON) -c "from importlinter.cli import lint_imports_command; lint_imports_command(['--no-cache'])"  # architecture contracts: .importlinter
	$(PYTHON) -m pytest -q --durations=25 tests  # the slowest tests are listed at the end: the suite must stay inside CI's budget

ablation: $(READY)
	$(PYTHON) bench/ablation.py

science: $(READY)
	$(PYTHON) bench/science.py

fuzz: $(READY)
	$(PYTHON) bench/fuzz_readers.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

MUTATE ?=
mutation: $(READY)
	PYTHON=$(PYTHON) mutation/run.sh $(MUTATE)

smoke-data: $(READY)
	$(PYTHON) -m data_tools synth --out $(SMOKE_SYNTH) --episodes $(SMOKE_EPISODES) --seed 0
	$(PYTHON) -m data_tools cluster --src $(SMOKE_SYNTH) --out $(SMOKE_SYNTH)/clusters.json --level L1 --vl-k 6 --action-k 4 --seed 0
	$(PYTHON) -m data_tools build-shards --src $(SMOKE_SYNTH) --out $(SMOKE_SHARDS) --level L1 --seed 0 --clusters $(SMOKE_SYNTH)/clusters.json

# The smoke run's training half (smoke-train: on shards made earlier, e.g. carried to a GPU machine)
define smoke_train
	rm -rf $(RUNS)/smoke  # the smoke run starts over: no checkpoint of an earlier smoke run may be resumed
	@echo "== train $(SMOKE_STOP) steps, save, stop (as a job at its time limit would) =="
	$(PYTHON) -m wallwm_pretrain.train --config configs/smoke.yaml train.resume=none train.stop_after=$(SMOKE_STOP) \
	  data.shards=$(SMOKE_SHARDS) train.runs_root=$(RUNS) $(SMOKE_ARGS)
	@echo "== resume from the checkpoint and finish the run =="
	$(PYTHON) -m wallwm_pretrain.train --config configs/smoke.yaml train.resume=auto \
	  data.shards=$(SMOKE_SHARDS) train.runs_root=$(RUNS) $(SMOKE_ARGS)
endef

smoke-test: smoke-data
	$(smoke_train)

smoke-train: $(READY)
	$(smoke_train)

clean:
	rm -rf runs .gpu data/synth/smoke data/shards/smoke $(SMOKE_STATIC) $(WAN_SYNTH) $(WAN_SHARDS) $(WAN_MODELS) $(WAN_INIT) \
	  $(COND_SHARDS) $(COND_HELDOUT) $(COND_HELDOUT_SHARDS) $(COND_HELDOUT_SHARDS)-cond $(SMOKE_EPISODE_SHARDS)

# The real-model path end to end with tiny random models saved in their libraries' formats
# (nothing is downloaded). One thread per process: the tiny VAE is far slower on two.
# wan-data: the data and weights of smoke-wan; smoke-wan-train: its training half on them
wan-data: $(READY)
	$(PYTHON) -m data_tools synth --out $(WAN_SYNTH) --episodes $(WAN_EPISODES) --seed 0 --image-size 32 --quiet
	$(PYTHON) -m data_tools build-shards --src $(WAN_SYNTH) --out $(WAN_SHARDS) --level L1 --seed 0
	$(PYTHON) -m wallwm_pretrain.convert make-tiny --out $(WAN_MODELS) --seed 0
	OMP_NUM_THREADS=1 $(PYTHON) -m data_tools encode-latents --shards $(WAN_SHARDS) --vae $(WAN_MODELS)/vae
	OMP_NUM_THREADS=1 $(PYTHON) -m data_tools embed-captions --shards $(WAN_SHARDS) --text-encoder $(WAN_MODELS)/text_encoder
	$(PYTHON) -m wallwm_pretrain.convert wan --src $(WAN_MODELS)/transformer --out $(WAN_INIT) \
	  --config configs/smoke_wan.yaml --num-views 2 model.action_dim=4 model.state_dim=8 data.shards=$(WAN_SHARDS)

define wan_train
	rm -rf $(RUNS)/smoke-wan
	@echo "== train $(WAN_STOP) steps from the converted weights, save, stop =="
	OMP_NUM_THREADS=1 $(PYTHON) -m wallwm_pretrain.train --config $(WAN_INIT)/config.yaml \
	  model.init_from=$(WAN_INIT) train.resume=none train.stop_after=$(WAN_STOP) data.shards=$(WAN_SHARDS) \
	  train.runs_root=$(RUNS) $(WAN_ARGS)
	@echo "== resume from the checkpoint and finish the run =="
	OMP_NUM_THREADS=1 $(PYTHON) -m wallwm_pretrain.train --config $(WAN_INIT)/config.yaml \
	  model.init_from=$(WAN_INIT) train.resume=auto data.shards=$(WAN_SHARDS) train.runs_root=$(RUNS) $(WAN_ARGS)
endef

smoke-wan: wan-data
	$(wan_train)

smoke-wan-train: $(READY)
	$(wan_train)

# The text conditioner on the smoke world: a frozen tiny random Qwen3.5 VLM (make-tiny's vlm/),
# the heads trained on conditioner shards of the smoke episodes, then scored on held-out episodes
# (another synth seed) against the most-frequent-next-event baseline (bench/conditioner_accuracy.py).
smoke-conditioner: smoke-data
	$(PYTHON) -m wallwm_pretrain.convert make-tiny --out $(WAN_MODELS) --seed 0
	$(PYTHON) -m data_tools build-conditioner --src $(SMOKE_SHARDS) --out $(COND_SHARDS) --per-event 3 --quiet
	OMP_NUM_THREADS=1 $(PYTHON) -m data_tools embed-captions --shards $(COND_SHARDS) --text-encoder $(WAN_MODELS)/text_encoder
	rm -rf runs/smoke-conditioner
	$(PYTHON) -m wallwm_pretrain.train --config configs/smoke_conditioner.yaml data.shards=$(COND_SHARDS) \
	  model.conditioner.vlm=$(WAN_MODELS)/vlm train.resume=none
	$(PYTHON) -m data_tools synth --out $(COND_HELDOUT) --episodes 12 --seed 1 --quiet
	$(PYTHON) -m data_tools build-shards --src $(COND_HELDOUT) --out $(COND_HELDOUT_SHARDS) --level L1 --seed 0
	$(PYTHON) -m data_tools build-conditioner --src $(COND_HELDOUT_SHARDS) --out $(COND_HELDOUT_SHARDS)-cond --per-event 3 --quiet
	$(PYTHON) bench/conditioner_accuracy.py --ckpt runs/smoke-conditioner --train $(COND_SHARDS) \
	  --heldout $(COND_HELDOUT_SHARDS)-cond --json runs/smoke-conditioner/accuracy.json

# Unified mode on the smoke world (configs/smoke_unified.yaml): episode shards and their window
# clusters, then 100 steps from the event-mode towers (make smoke-test), the conditioner heads
# (make smoke-conditioner) and the Staircase branch (trained here when missing), each made first
# if its run is missing; then one chunk with each text-context source (infer --mode unified).
smoke-unified: smoke-data
	test -d runs/smoke/checkpoints || $(MAKE) smoke-test
	test -d runs/smoke-conditioner/checkpoints || $(MAKE) smoke-conditioner
	test -d runs/smoke-staircase/checkpoints || $(PYTHON) -m wallwm_pretrain.train --config configs/smoke_staircase.yaml \
	  data.shards=$(COND_SHARDS) model.conditioner.vlm=$(WAN_MODELS)/vlm model.staircase.small_lm=$(WAN_MODELS)/small_lm
	$(PYTHON) -m data_tools build-episodes --shards $(SMOKE_SHARDS) --out $(SMOKE_EPISODE_SHARDS) --quiet
	$(PYTHON) -m data_tools cluster-windows --shards $(SMOKE_EPISODE_SHARDS) --horizon 16 --history 2 --frame-stride 4 --quiet
	rm -rf runs/smoke-unified
	$(PYTHON) -m wallwm_pretrain.train --config configs/smoke.yaml --config configs/smoke_unified.yaml \
	  model.conditioner.vlm=$(WAN_MODELS)/vlm train.resume=none
	for c in atomic global staircase; do \
	  $(PYTHON) -m wallwm_pretrain.infer --mode unified --context $$c --policy runs/smoke-unified \
	    --shards $(SMOKE_EPISODE_SHARDS) --anchor 32 || exit 1; done

# The training recipe on the smoke world (configs/recipes/smoke.yaml): stage 1 the video tower on
# shards with quasi-static steps pruned ($(SMOKE_STATIC), build-shards --prune-static), stage 2
# the action tower from stage 1's final weights, stage 3 the conditioner heads, stage 4 the Staircase
# branch (the data steps of smoke-conditioner first), stage 5 unified mode on episode shards with
# the three text contexts, from stages 2, 3 and 4, balanced per window (cluster-windows re-clusters
# the episodes' windows for configs/smoke_unified.yaml's chunk_horizon 16 and history_latents 2).
# Not started over: run it again after an interruption to resume the stage that stopped (finished
# stages are skipped); `rm -rf runs/recipe-smoke-*` starts afresh.
recipe-smoke: smoke-data
	$(PYTHON) -m data_tools build-shards --src $(SMOKE_SYNTH) --out $(SMOKE_STATIC) --level L1 --seed 0 \
	  --clusters $(SMOKE_SYNTH)/clusters.json --prune-static $(SMOKE_STATIC_THRESHOLD) --quiet
	$(PYTHON) -m wallwm_pretrain.convert make-tiny --out $(WAN_MODELS) --seed 0
	$(PYTHON) -m data_tools build-conditioner --src $(SMOKE_SHARDS) --out $(COND_SHARDS) --per-event 3 --quiet
	OMP_NUM_THREADS=1 $(PYTHON) -m data_tools embed-captions --shards $(COND_SHARDS) --text-encoder $(WAN_MODELS)/text_encoder
	$(PYTHON) -m data_tools build-episodes --shards $(SMOKE_SHARDS) --out $(SMOKE_EPISODE_SHARDS) --quiet
	$(PYTHON) -m data_tools cluster-windows --shards $(SMOKE_EPISODE_SHARDS) --horizon 16 --history 2 --frame-stride 4 --quiet
	$(PYTHON) -m wallwm_pretrain.recipe --recipe configs/recipes/smoke.yaml

# The offline wheelhouse of the GPU machine (Python 3.12, manylinux x86_64, its own CUDA torch):
# the wheels of bench/gpu_wheels.txt (pinned; setup.cfg's pins win), never torch, under 60 MiB.
gpu-wheels:
	$(SYS_PYTHON) bench/gpu_wheels.py --out $(GPU_WHEELS)

# The GPU check (bench/gpu_check.sh): on a GPU machine after `bench/gpu_check.sh --prepare` here,
# with the image's python3 (GPU_PYTHON) under the venv it makes over it. The CPU dry run in this
# environment: make gpu-check GPU_CHECK_ARGS=--dry-run GPU_PYTHON=.venv/bin/python
GPU_CHECK_ARGS ?=
GPU_PYTHON ?= $(SYS_PYTHON)
gpu-check:
	PYTHON=$(GPU_PYTHON) bench/gpu_check.sh $(GPU_CHECK_ARGS)
