"""The suite's skip policy, as a pytest plugin (loaded by tests/conftest.py).

A test may skip only for a reason a user can act on, and only for a reason listed in
:data:`ALLOWED`; the summary shows every skip with its reason (``-rs``, part of ``-ra`` in
setup.cfg). Any other skip makes the session fail, so ``make test`` on a machine where some
proof did not run (e.g. the multi-process tests on a GPU node) fails saying which and why
instead of passing with the proof silently dropped.
"""

from __future__ import annotations

import pytest

# Reasons (prefixes) for which a test may skip; each names what the user would have to change.
ALLOWED = (
    "needs a CUDA GPU",  # the NCCL/CUDA path, on a machine without one
    "needs 2 CUDA GPUs",
    # a real Slurm, where make test could not install it (it does as root with apt-get)
    "Slurm/munge not installed",
    "a test Slurm runs its daemons as root",
)

_disallowed: list[tuple[str, str]] = []


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not reason.startswith(ALLOWED):
            _disallowed.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _disallowed and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if not _disallowed:
        return
    terminalreporter.section("skips that are not allowed (tests/skip_policy.py)", red=True)
    for nodeid, reason in _disallowed:
        terminalreporter.line(f"{nodeid}: {reason}")
    terminalreporter.line(
        f"{len(_disallowed)} test(s) skipped for a reason outside skip_policy.ALLOWED: the session fails"
    )
