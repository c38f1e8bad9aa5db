"""No silent skips: a skip outside the allow-list fails the session; the torch floor is one value.

The policy plugin (tests/skip_policy.py) runs here on a throw-away test folder in a separate
pytest process, so its verdict is the exit code a user of ``make test`` would get.
"""

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

CASES = '''
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="{allowed}")
def test_allowed():
    pass

{extra}
'''


def run_suite(tmp_path, extra=""):
    """The one place this file runs pytest on a generated folder under the skip policy."""
    from skip_policy import ALLOWED

    (tmp_path / "test_cases.py").write_text(CASES.format(allowed=ALLOWED[0] + " (here)", extra=extra))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-q", "-rs", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_allowed_skip_passes_and_is_shown(tmp_path):
    out = run_suite(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 1 skipped" in out.stdout
    assert "SKIPPED" in out.stdout and "needs a CUDA GPU (here)" in out.stdout  # -rs shows the reason


@pytest.mark.parametrize("extra", [
    '@pytest.mark.skipif(True, reason="gloo/CPU runs")\ndef test_other():\n    pass',
    'def test_inline():\n    pytest.skip("torch too old")',
])
def test_any_other_skip_fails_the_session_naming_it(tmp_path, extra):
    out = run_suite(tmp_path, extra)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "skips that are not allowed" in out.stdout
    name = "test_other" if "test_other" in extra else "test_inline"
    reason = "gloo/CPU runs" if "test_other" in extra else "torch too old"
    assert f"test_cases.py::{name}: {reason}" in out.stdout


CUDA_CASES = '''
import pytest
import torch

@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU/gloo launch tests")
def test_gloo_only():
    pass

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (here)")
def test_cuda_only():
    pass
'''

# A plugin that makes the process look like a GPU node before any test module is imported.
PRETEND_CUDA = '''
import torch

def pytest_configure(config):
    torch.cuda.is_available = lambda: True
'''


def test_a_cpu_only_skip_fails_the_session_on_a_machine_that_reports_cuda(tmp_path):
    (tmp_path / "test_cases.py").write_text(CUDA_CASES)
    (tmp_path / "pretend_cuda.py").write_text(PRETEND_CUDA)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS), str(REPO)]))
    args = [sys.executable, "-m", "pytest", "-p", "skip_policy", "-q", "-rs", "-p", "no:cacheprovider"]
    # on this CPU machine both tests run (the CUDA one skips for an allowed reason at most) ...
    cpu = subprocess.run([*args, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    # ... on a GPU node the gloo-only test skips for a reason the policy does not list: red, named
    gpu = subprocess.run([*args, "-p", "pretend_cuda", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert gpu.returncode == 1, gpu.stdout + gpu.stderr
    assert "1 passed, 1 skipped" in gpu.stdout  # test_cuda_only ran: the pretence took effect
    assert "test_cases.py::test_gloo_only: CPU/gloo launch tests" in gpu.stdout
    assert "test_cuda_only" not in gpu.stdout.split("skips that are not allowed")[1]


# Evaluates every test's skip marks at collection (as pytest would at set-up) on a pretended GPU
# node and writes the skips to a JSON file; runs nothing. Skips called inside a test's body are
# outside its reach: those are caught by the policy whenever the suite runs on a GPU node.
SWEEP = '''
import json, os
import torch
from _pytest.skipping import evaluate_skip_marks

def pytest_configure(config):
    torch.cuda.is_available = lambda: True

def pytest_collection_modifyitems(session, config, items):
    skips = {}
    for item in items:
        skipped = evaluate_skip_marks(item)
        if skipped is not None:
            skips[item.nodeid] = skipped.reason
    with open(os.environ["SWEEP_OUT"], "w") as f:
        json.dump({"collected": len(items), "skips": skips}, f)
    config.hook.pytest_deselected(items=list(items))
    items[:] = []
'''


def test_no_test_of_the_suite_skips_outside_the_policy_on_a_gpu_node(tmp_path):
    from skip_policy import ALLOWED

    (tmp_path / "cuda_sweep.py").write_text(SWEEP)
    out = tmp_path / "skips.json"
    env = dict(os.environ, SWEEP_OUT=str(out), PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "cuda_sweep", "-p", "no:cacheprovider",
                           "--ignore", str(TESTS / "test_skip_policy.py"), str(TESTS)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["collected"] > 1000  # the whole suite was looked at
    bad = {node: reason for node, reason in result["skips"].items() if not reason.startswith(ALLOWED)}
    assert not bad, bad


def test_torch_floor_is_the_same_in_setup_cfg_and_envcheck():
    from wallwm_pretrain.envcheck import MIN_VERSIONS, _release

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    [torch_req] = [r for r in requires if re.split(r"[<>=!~ ]", r)[0] == "torch"]  # not torchmetrics
    assert torch_req == "torch>=" + ".".join(map(str, MIN_VERSIONS["torch"]))
    assert MIN_VERSIONS["torch"] >= (2, 9)  # torch.optim.Muon, the reference of tests/optim
    assert _release("2.13.0+cpu") == (2, 13, 0) and _release("2.9.0a0+git1") == (2, 9, 0)
    assert _release("2.8.1") < MIN_VERSIONS["torch"] <= _release("2.9.0")
