"""The pieces of a stop request, in one process: a real signal only sets a flag, durations parse
as Slurm writes them, a deadline keeps back the measured save and step, the exit record."""

from __future__ import annotations

import os
import signal
import time

import pytest

from wallwm_pretrain.config import ConfigError, load_config, parse_duration
from wallwm_pretrain.resilience.exit import restart_attempt, stop_exit_code, write_exit_record
from wallwm_pretrain.resilience.stop import Deadline, StopRequests


def test_signals_set_a_flag_and_sigterm_outranks_sigusr1():
    before = signal.getsignal(signal.SIGUSR1)
    stops = StopRequests()
    try:
        assert stops.reason == ""
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end this process
        assert stops.reason == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.reason == "SIGTERM"
    finally:
        stops.close()
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.parametrize("text, seconds", [("", None), ("90", 90), ("01:30", 90), ("47:30:00", 171000),
                                           ("2-00:00:10", 172810)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_fails_before_any_work():
    with pytest.raises(ConfigError, match=r"train.max_wall_time: expected \[D-\]HH:MM:SS or seconds, got 'soon'"):
        load_config(None, ["train.max_wall_time=soon"])


def test_deadline_keeps_back_the_measured_save_and_step(monkeypatch):
    monkeypatch.delenv("WALLWM_JOB_END_TIME", raising=False)
    assert not Deadline(None, 30).reached()  # no budget, no job end: never
    start = time.monotonic()
    d = Deadline(1000, 0, start=start)
    assert not d.reached()
    d.note_save(400)
    d.note_step(300)
    assert not d.reached() and d.reserve_s == 700
    d.note_save(800)  # the longest save counts
    assert d.reached()
    monkeypatch.setenv("WALLWM_JOB_END_TIME", str(time.time() - 1))  # the job's end has passed
    assert Deadline(10**6, 0).reached()


def test_exit_record(tmp_path, monkeypatch):
    target = tmp_path / "logs" / "exit-status"
    monkeypatch.setenv("WALLWM_EXIT_FILE", str(target))
    write_exit_record("requeue", 14, "wall time")
    assert target.read_text() == "requeue step=14 reason=wall_time\n"
    with pytest.raises(ValueError):
        write_exit_record("maybe", 1)


def test_a_restarted_worker_knows_its_attempt_and_how_the_last_one_ended(tmp_path, monkeypatch):
    target = tmp_path / "exit-status"
    monkeypatch.setenv("WALLWM_EXIT_FILE", str(target))
    for name in ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"):
        monkeypatch.delenv(name, raising=False)
    assert restart_attempt() is None and stop_exit_code() == 75  # not under torchrun
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert restart_attempt() is None  # a first start
    assert stop_exit_code() == 0  # torchrun would restart on 75; the record says requeue instead
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    attempt, budget, before = restart_attempt()
    assert (attempt, budget) == (2, 3) and before.startswith("no exit record (a rank was killed")
    write_exit_record("failed", -1, "peer failure")
    assert restart_attempt() == (2, 3, "failed step=-1 reason=peer_failure")
