"""A real one-node SLURM cluster on this machine, for the workflow's cluster tests.

Debian's SLURM and munge packages (``make system-deps`` installs them), configured in a
temporary folder that ``SLURM_CONF`` points at: one node (this host, its real core count and
memory) with a fake GPU, no cgroups and no accounting database. The daemons run in the
foreground as children of the test process, are stopped by PID, and also die with the test
process if it is killed (parent-death signal).
"""

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "munged"]
PARTITION = "ci"
# Jobs stay visible to squeue this long after they end: snakemake's squeue status checks need
# it (> 3 x slurm-init-seconds-before-status-checks), and the tests read the job history.
MIN_JOB_AGE_S = 3600

_PR_SET_PDEATHSIG = 1


def _which(program: str) -> str | None:
    return shutil.which(program, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/usr/bin")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if _which(p) is None]


def skip_reason() -> str | None:
    """Why the cluster cannot run here, or None: it needs root and SLURM installed."""
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd, munged as user munge)"
    if missing_programs():
        return f"SLURM is not installed ({', '.join(missing_programs())} missing): run make system-deps"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``env`` is the environment its clients need."""

    root: Path
    node: str
    cpus: int
    memory_mb: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """SLURM_CONF for the clients, and PATH with the srun wrapper first (see _write_srun_wrapper)."""
        return os.environ | {"SLURM_CONF": str(self.conf),
                             "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
        return result

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still knows (all states, up to MinJobAge after they end), by job ID."""
        out = self.run("scontrol", "--oneliner", "show", "jobs").stdout
        jobs = {}
        for line in out.splitlines():
            if line.startswith("JobId="):
                # One "Key=Value" per word: names, comments and paths here have no spaces.
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                jobs[fields["JobId"]] = fields
        return jobs

    def active_jobs(self) -> list[str]:
        out = self.run("squeue", "--noheader", "--format=%i", "--states=PD,R,CG,S,CF,RQ").stdout
        return out.split()

    def cancel_all(self, timeout_s: float = 60) -> None:
        """Cancel every job of this cluster (all are the tests') and wait until none is left."""
        if self.active_jobs():
            self.run("scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name, check=False)
        deadline = time.monotonic() + timeout_s
        while self.active_jobs() and time.monotonic() < deadline:
            time.sleep(1)

    def logs(self, chars: int = 1500) -> str:
        """The end of each daemon's log and output, for error messages."""
        paths = [*sorted((self.root / "log").glob("*")), self.root / "munge" / "munged.log"]
        return "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')[-chars:]}" for p in paths if p.is_file())

    def stop(self) -> None:
        """Cancel leftover jobs, then stop slurmd, slurmctld and munged by PID."""
        try:
            if all(p.poll() is None for p in self.procs.values()):
                self.cancel_all()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                proc = self.procs.get(name)
                if proc is None or proc.poll() is not None:
                    continue
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            shutil.rmtree(self.root, ignore_errors=True)


def _write_config(root: Path, node: str, cpus: int, memory_mb: int) -> None:
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir()
    (root / "slurm.conf").write_text(f"""\
# One-node test cluster written by tests/slurm_cluster.py
ClusterName=cmbflowci
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket.2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers: track a job's processes by process group (by parent PID, a process
# that ignores SIGTERM, as snakemake does, outlives scancel once its parent shell is gone).
ProctrackType=proctrack/pgid
TaskPlugin=task/none
KillWait=5
# Schedule cores and memory (several jobs at once); without DefMemPerCPU a job takes all memory.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# No slurmdbd: no accounting (sacct does not work), jobs are listed by squeue/scontrol.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    # A fake GPU: SLURM schedules it and sets CUDA_VISIBLE_DEVICES; there is no device behind it.
    (root / "gres.conf").write_text("AutoDetect=off\nName=gpu File=/dev/null\n")


def _write_srun_wrapper(root: Path) -> None:
    """An srun that finds this cluster's configuration.

    Inside each job, snakemake-executor-plugin-slurm-jobstep 0.6.1 starts the rule with srun
    in an environment stripped of SLURM_* variables, SLURM_CONF included; srun then looks for
    /etc/slurm/slurm.conf, which this test cluster does not write (it leaves the machine's
    configuration alone). The jobs inherit PATH, so this wrapper puts SLURM_CONF back.
    """
    srun = _which("srun") or "/usr/bin/srun"
    wrapper = root / "bin" / "srun"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={root / "slurm.conf"} exec {srun} "$@"\n')
    wrapper.chmod(0o755)


def _start_munged(root: Path) -> subprocess.Popen:
    """munged as user munge, on its own socket in the cluster folder (the system one is left alone)."""
    munge = root / "munge"
    munge.mkdir()
    munge.chmod(0o755)  # clients need to reach the socket
    key = Path("/etc/munge/munge.key")
    user = pwd.getpwnam("munge")
    os.chown(munge, user.pw_uid, user.pw_gid)
    if not key.exists():
        key = munge / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chown(key, user.pw_uid, user.pw_gid)
        key.chmod(0o400)
    cmd = ["munged", "--foreground", f"--socket={munge}/munge.socket.2", f"--key-file={key}",
           f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"]
    return _start(cmd, root, "munged", os.environ, user=user.pw_uid, group=user.pw_gid, extra_groups=[])


def _start(cmd: list[str], root: Path, name: str, env: dict[str, str], **user) -> subprocess.Popen:
    """A daemon in the foreground: its own session (a Ctrl-C of the tests reaches it only
    through the teardown), output to the log folder, and SIGTERM when the test process dies."""
    with (root / "log" / f"{name}.out").open("wb") as out:
        return subprocess.Popen([_which(cmd[0]) or cmd[0], *cmd[1:]], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent, **user)


def _wait(condition, timeout_s: float, what: str, procs: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [name for name, p in procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}")
        if condition():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def start_cluster() -> SlurmCluster:
    """Write the configuration and start munged, slurmctld and slurmd; return once the node is idle."""
    # Not under pytest's tmp_path: munged (user munge) must reach its socket folder.
    root = Path(tempfile.mkdtemp(prefix="cmbflow-slurm-"))
    root.chmod(0o755)
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    memory_mb = int(_mem_total_mb() * 0.9)  # below MemTotal, or slurmd drains the node
    cluster = SlurmCluster(root, node, cpus, memory_mb)
    try:
        _write_config(root, node, cpus, memory_mb)
        _write_srun_wrapper(root)
        cluster.procs["munged"] = _start_munged(root)
        _wait(lambda: (root / "munge" / "munge.socket.2").exists(), 20, "munged", cluster.procs)
        cluster.procs["slurmctld"] = _start(["slurmctld", "-D", "-c"], root, "slurmctld", cluster.env)
        cluster.procs["slurmd"] = _start(["slurmd", "-D", "-N", node], root, "slurmd", cluster.env)

        def node_idle() -> bool:
            result = cluster.run("sinfo", "--noheader", "--format=%t", check=False)
            return result.returncode == 0 and result.stdout.strip() == "idle"

        _wait(node_idle, 60, "the node to become idle", cluster.procs)
    except BaseException as exc:
        logs = cluster.logs()
        cluster.stop()
        if isinstance(exc, RuntimeError):
            raise RuntimeError(f"{exc}{logs}") from exc
        raise
    return cluster
