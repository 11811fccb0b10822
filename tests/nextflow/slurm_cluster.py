"""A one-node Slurm cluster on localhost for the ``-profile slurm`` test (tests/nextflow/README.md).

``slurm_cluster()`` starts, in a fresh scratch folder, everything a real ``sbatch`` needs:

* its own ``munged`` with a new random key and a private socket (Slurm finds it through
  ``AuthInfo=socket=...``), so neither ``/etc/munge`` nor a munged already running is touched;
* ``slurmctld`` and ``slurmd`` as root, with a ``slurm.conf`` of their own (given to the daemons
  and to every client command through ``SLURM_CONF``; ``/etc/slurm`` is not read or written) on
  free TCP ports, so a site's Slurm on the same machine is not disturbed;
* one node, described as ``slurmd -C`` sees this machine (CPUs, sockets, cores, threads; 1 GiB of
  memory is left to the system), in one partition ``debug``, no accounting.

It waits until ``sinfo`` reports the node idle, yields a ``SlurmCluster`` (``env`` holds
``SLURM_CONF``), and at the end cancels the jobs left, then stops the daemons it started by the
pids in their pid files and removes the folder.

The packages are not installed here: ``.ci/run`` installs ``slurmctld slurmd slurm-client munge``
under ``CI=true``. When a binary is missing, the tests do not run as root, or the daemons do not
come up, the test is skipped with the reason on a developer's machine and fails under
``CI=true`` (the rule of ``runtime._unavailable``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .runtime import _unavailable

#: Where the daemons live besides PATH (sbin is often not on a user's PATH).
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sinfo", "squeue", "scontrol", "scancel", "sbatch")
#: Memory left to the system when the node's RealMemory is set from ``slurmd -C``.
RESERVED_MIB = 1024
PARTITION = "debug"


@dataclass
class SlurmCluster:
    """A running one-node cluster: its files, its node and the environment its clients need."""

    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mib: int
    env: dict[str, str] = field(default_factory=dict)

    def log(self, name: str, chars: int = 3000) -> str:
        """The end of ``slurmctld.log``, ``slurmd.log`` or ``munged.log`` (``""`` if absent)."""
        path = self.root / "log" / name
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def logs(self) -> str:
        """The ends of the daemons' logs, for assertion messages."""
        return "".join(f"\n--- {name}\n{self.log(name)}"
                       for name in ("slurmctld.log", "slurmd.log", "munged.log"))

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A Slurm client command (``sinfo``, ``scontrol``, ...) against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)


def find_binary(name: str) -> str | None:
    """``name`` on PATH or in the usual sbin folders."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _node_hardware(slurmd: str) -> dict[str, str]:
    """``slurmd -C``'s description of this machine (``CPUs``, ``RealMemory``, ...)."""
    proc = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL)
    first = proc.stdout.splitlines()[0] if proc.stdout.strip() else ""
    fields = dict(re.findall(r"(\w+)=(\S+)", first))
    if proc.returncode != 0 or "CPUs" not in fields or "RealMemory" not in fields:
        _unavailable(f"`slurmd -C` did not describe this machine (exit {proc.returncode}): "
                     f"{(proc.stdout + proc.stderr).strip()[-500:]}")
    return fields


def slurm_conf(root: Path, node: str, hardware: dict[str, str], ports: list[int],
               munge_socket: Path) -> tuple[str, int, int]:
    """Text of ``slurm.conf`` and the node's CPUs and memory (MiB)."""
    cpus = int(hardware["CPUs"])
    memory = int(hardware["RealMemory"]) - RESERVED_MIB
    layout = " ".join(f"{key}={hardware[key]}" for key in
                      ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                      if key in hardware)
    lines = [
        "ClusterName=local",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "KillWait=5",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} {layout} RealMemory={memory}"
        " State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n", cpus, memory


def _pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().split()[0])
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (a daemon that exited, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_daemon(pid_file: Path, wait: float = 15) -> None:
    """SIGTERM the daemon whose pid is in ``pid_file``; SIGKILL it if it is still there."""
    pid = _pid(pid_file)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _start(cmd: list[str], env: dict[str, str], pid_file: Path, what: str,
           log: Path, wait: float = 20) -> None:
    """Run a daemonising ``cmd``; wait for its pid file (``_unavailable`` if it fails)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + wait
    while proc.returncode == 0 and time.monotonic() < deadline:
        pid = _pid(pid_file)
        if pid is not None and _alive(pid):
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
    _unavailable(f"{what} did not start (`{' '.join(cmd)}` exit {proc.returncode}): "
                 f"{(proc.stdout + proc.stderr).strip()[-800:]}\n--- {log.name}\n{tail}")


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = cluster.run("sinfo", "--noheader", "--nodes", cluster.node, "--format", "%T")
        state = (proc.stdout + proc.stderr).strip()
        if proc.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    _unavailable(f"the Slurm node {cluster.node} is not idle after {timeout:.0f} s "
                 f"(sinfo: {state!r}){cluster.logs()}")


def _cancel_jobs(cluster: SlurmCluster, wait: float = 15) -> None:
    """Cancel the jobs still known to the cluster and wait for them to end."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        proc = cluster.run("squeue", "--noheader", "--format", "%i", "--states", "PD,R,CG,S")
        jobs = proc.stdout.split()
        if proc.returncode != 0 or not jobs:
            return
        cluster.run("scancel", *jobs)
        time.sleep(1)


def _check_prerequisites() -> dict[str, str]:
    found = {name: find_binary(name) for name in (*DAEMONS, *CLIENTS)}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        _unavailable(f"Slurm/munge not installed (missing {', '.join(missing)}; on Debian: "
                     "apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        _unavailable("the one-node Slurm cluster needs root (slurmd runs the jobs)")
    return {name: path for name, path in found.items() if path}


@contextlib.contextmanager
def slurm_cluster(timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on localhost; yield the cluster; stop them all.

    ``timeout`` bounds the wait for the node to be idle. The scratch folder is made with
    ``tempfile`` and not under pytest's ``tmp_path``: munged wants every folder above its socket
    searchable by all, which ``/tmp/pytest-of-USER`` (mode 700) is not.
    """
    bins = _check_prerequisites()
    hardware = _node_hardware(bins["slurmd"])
    node = hardware.get("NodeName") or socket.gethostname().split(".")[0]
    root = Path(tempfile.mkdtemp(prefix="e2m-slurm-"))
    started: list[Path] = []
    try:
        root.chmod(0o755)
        for sub in ("state", "spool", "run", "log", "munge"):
            (root / sub).mkdir(mode=0o755)
            (root / sub).chmod(0o755)
        munge_dir = root / "munge"
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = munge_dir / "munge.socket"
        text, cpus, memory = slurm_conf(root, node, hardware, _free_ports(2), munge_socket)
        conf = root / "slurm.conf"
        conf.write_text(text)
        cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=cpus, memory_mib=memory,
                               env={"SLURM_CONF": str(conf)})
        env = {**os.environ, **cluster.env}

        munged_log = root / "log" / "munged.log"
        started.append(munge_dir / "munged.pid")
        _start([bins["munged"], f"--socket={munge_socket}", f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munged_log}",
                f"--seed-file={munge_dir / 'munged.seed'}"],
               env, munge_dir / "munged.pid", "munged", munged_log)
        check = subprocess.run(f"{bins['munge']} -n --socket={munge_socket} | "
                               f"unmunge --socket={munge_socket}", shell=True, env=env,
                               capture_output=True, text=True, timeout=30, check=False)
        if "Success" not in check.stdout:
            _unavailable(f"munge does not work: {(check.stdout + check.stderr).strip()[-800:]}")

        started.append(root / "run" / "slurmctld.pid")
        _start([bins["slurmctld"], "-i"], env, started[-1], "slurmctld",
               root / "log" / "slurmctld.log")
        started.append(root / "run" / "slurmd.pid")
        _start([bins["slurmd"], "-N", node], env, started[-1], "slurmd",
               root / "log" / "slurmd.log")
        _wait_idle(cluster, timeout)
        try:
            yield cluster
        finally:
            _cancel_jobs(cluster)
    finally:
        for pid_file in reversed(started):
            stop_daemon(pid_file)
        shutil.rmtree(root, ignore_errors=True)
