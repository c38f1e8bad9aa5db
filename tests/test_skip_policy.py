"""No silent skips: a skip outside the allow-list fails the session; the torch floor is one value.

The policy plugin (tests/skip_policy.py) runs here on a throw-away test folder in a separate
pytest process, so its verdict is the exit code a user of ``make test`` would get.
"""

import configparser
import os
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


def test_torch_floor_is_the_same_in_setup_cfg_and_envcheck():
    from wallwm_pretrain.envcheck import MIN_VERSIONS, _release

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    [torch_req] = [r for r in requires if r.startswith("torch")]
    assert torch_req == "torch>=" + ".".join(map(str, MIN_VERSIONS["torch"]))
    assert MIN_VERSIONS["torch"] >= (2, 9)  # torch.optim.Muon, the reference of tests/optim
    assert _release("2.13.0+cpu") == (2, 13, 0) and _release("2.9.0a0+git1") == (2, 9, 0)
    assert _release("2.8.1") < MIN_VERSIONS["torch"] <= _release("2.9.0")
