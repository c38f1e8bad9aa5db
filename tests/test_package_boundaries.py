"""Package boundaries: the training package never imports the offline data tools, and the
simulator package imports neither (both consumers depend on ``sim``, never the reverse)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"wallwm_pretrain": {"data_tools"}, "sim": {"data_tools", "wallwm_pretrain"}}


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package]) for f in files}
    bad = {f: pkgs for f, pkgs in bad.items() if pkgs}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_the_client_needs_no_torch():
    """wallwm_pretrain.client runs on a robot's computer: importing it loads neither torch nor
    the simulator (only numpy, msgpack and websockets)."""
    code = ("import sys, wallwm_pretrain.client; "
            "heavy = sorted(m for m in ('torch', 'megatron', 'mujoco', 'sim', 'data_tools') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
