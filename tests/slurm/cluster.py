"""A real two-node Slurm on this one host, for tests: munged, slurmctld and two slurmd (n1, n2).

Everything lives in one temporary folder: munge key and socket, ``slurm.conf``, state, spool and
logs; clients find the cluster through ``$SLURM_CONF``. Both nodes are ``127.0.0.1`` with a port
each (``slurmd -N n1``); ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` need
neither cgroups nor systemd; ``SlurmdParameters=config_overrides`` lets nodes declare more CPUs
than the machine has; ``cred_expire=10`` lets a requeued job start again after ~12 s instead of
the default two minutes. Stopping cancels the cluster's jobs first (they outlive
``scontrol shutdown``), then ends the daemons this object started, by pid.

Trade-off: one host, so "two nodes" share a file system, clock and loopback network; what is
tested is Slurm's own behaviour (signals, requeue, srun across nodes), not the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
INSTALL = "apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client"


def missing_reason() -> Optional[str]:
    """Why a real Slurm cannot start here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): as root, `{INSTALL}` (make test does it)"
    if os.geteuid() != 0:
        return "a test Slurm runs its daemons as root (SlurmdUser=root); run the Slurm tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` s pass (error)."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.jobs: list[str] = []  # ids of the jobs this cluster's tests submitted
        host = socket.gethostname().split(".")[0]
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = root / "munge" / "munge.socket.2"
        ports = {name: _free_port() for name in ("ctld", "n1", "n2")}
        nodes = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={ports[n]} CPUs=4 RealMemory=1000 State=UNKNOWN"
            for n in ("n1", "n2")
        )
        self.conf = root / "slurm.conf"
        self.conf.write_text(f"""ClusterName=wallwmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}/%n
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'spool'}/slurmd-%n.pid
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
{nodes}
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for k in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[k]  # when the tests themselves run inside a Slurm job

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs.append(subprocess.Popen([*args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           cwd=self.root, start_new_session=True))

    def start(self) -> "SlurmCluster":
        m = self.root / "munge"
        self._start("munged", _exe("munged"), "-F", "--force", f"--key-file={m / 'munge.key'}",
                    f"--socket={self.socket}", f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'seed'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}")
        wait_for(self.socket.exists, 20, "munged's socket")
        self._start("slurmctld", _exe("slurmctld"), "-D", "-i", "-f", str(self.conf))
        for node in ("n1", "n2"):
            self._start(f"slurmd-{node}", _exe("slurmd"), "-D", "-N", node, "-f", str(self.conf))
        wait_for(lambda: self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).split() == ["n1", "idle", "n2", "idle"]
                 or self._dead(), 60, "two idle nodes")
        if self._dead():
            raise RuntimeError(f"a Slurm daemon exited: {self._dead()}; logs in {self.root / 'log'}")
        return self

    def _dead(self) -> list:
        return [p.args[0] for p in self.procs if p.poll() is not None]

    def run(self, *cmd: str, check: bool = True) -> str:
        out = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout.strip()

    def sbatch(self, *args: str, env: Optional[dict] = None, cwd: Optional[Path] = None) -> str:
        out = subprocess.run(["sbatch", "--parsable", *args], env=dict(self.env, **(env or {})), cwd=cwd,
                             capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]
        self.jobs.append(job_id)
        return job_id

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as key -> value ('' when Slurm no longer knows the job)."""
        text = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)

    def stop(self) -> None:
        try:
            if self.jobs:  # only the jobs submitted here; then the daemons started here, by pid
                self.run("scancel", *self.jobs, check=False)
                wait_for(lambda: not self.run("squeue", "-h", "-j", ",".join(self.jobs), check=False), 60,
                         "the test jobs to end")
        except Exception:
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
