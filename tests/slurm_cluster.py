"""A real single-node Slurm (munged, slurmctld, slurmd from Debian's `slurm-wlm` and `munge`) in a temporary
directory, so `--cluster slurm` is tested against the scheduler users run rather than a mock of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue")
INSTALL_HINT = "apt-get install slurm-wlm munge, as .ci/run does"


class SlurmUnavailable(RuntimeError):
    """Slurm could not be started here; the message is one line saying why and what fixes it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SingleNodeSlurm:
    """One node of `cpus` CPUs whatever the machine has (slurmd takes the configured size), so two one-core jobs
    run side by side even on a small CI machine. Every file lives in one temporary directory with a short path:
    munge's socket path must fit a Unix socket name."""

    def __init__(self, cpus: int = 4, memory_mb: int = 4096) -> None:
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.node = socket.gethostname().split(".")[0]
        self.directory = Path(tempfile.mkdtemp(prefix="gristmill-slurm-"))
        self.config = self.directory / "slurm.conf"
        self._daemons: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment in which `sbatch`, `squeue` and dask-jobqueue reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.config)}

    def start(self) -> None:
        """Raises SlurmUnavailable, with the daemon's log line that says why, if the node does not come up idle."""
        missing = [name for name in DAEMONS if shutil.which(name) is None]
        if missing:
            raise SlurmUnavailable(f"Slurm is not installed ({', '.join(missing)} not found); {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a single-node Slurm must run as root (slurmd starts jobs as their user)")
        self._start_munge()
        self._write_config()
        self._start("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.config)])
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.config), "-N", self.node])
        self._wait_until_idle()

    def stop(self) -> None:
        """Stops what `start` started and removes its directory. Jobs are cancelled and left to finish first: a
        slurmstepd whose slurmd is gone lingers, and ignores SIGTERM, so any still alive is killed at the end."""
        if self._daemons and self.config.exists():
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while not self._drained() and time.monotonic() < deadline:
                time.sleep(0.2)
        for daemon in reversed(self._daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in self._daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self._daemons.clear()
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def _drained(self) -> bool:
        """No job queued and no job process (slurmstepd, a Dask worker) left; True if the queue cannot be read."""
        try:
            return not self.job_ids() and not self._job_processes()
        except (subprocess.SubprocessError, OSError):
            return True

    def _job_processes(self) -> list[int]:
        """Processes whose environment names this cluster's slurm.conf, other than this one, the daemons and their
        children (slurmctld's slurmscriptd): slurmstepd detaches, and job processes run under it."""
        marker = f"SLURM_CONF={self.config}".encode()
        daemons = {daemon.pid for daemon in self._daemons}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemons | {os.getpid()}:
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent not in daemons and marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile, or not ours to read
                continue
        return found

    def __enter__(self) -> SingleNodeSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def job_ids(self) -> list[str]:
        """Jobs in the queue now, running or pending."""
        queue = subprocess.run(["squeue", "--noheader", "--format=%i"], env=self.env, capture_output=True,
                               text=True, timeout=30, check=True)
        return queue.stdout.split()

    def _start_munge(self) -> None:
        munge = self.directory / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        self._run(["mungekey", "--create", f"--keyfile={key}"], "mungekey")
        self.munge_socket = munge / "munge.socket"
        self._start("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait_for(lambda: self.munge_socket.exists(), "munged", munge / "munged.log")

    def _write_config(self) -> None:
        for name in ("state", "spool"):
            (self.directory / name).mkdir()
        self.config.write_text("\n".join([
            "ClusterName=gristmill-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.directory / 'state'}",
            f"SlurmdSpoolDir={self.directory / 'spool'}",
            f"SlurmctldPidFile={self.directory / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.directory / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.directory / 'slurmctld.log'}",
            f"SlurmdLogFile={self.directory / 'slurmd.log'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _wait_until_idle(self) -> None:
        def idle() -> bool:
            state = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=self.env, capture_output=True,
                                   text=True, timeout=30)
            return state.stdout.strip() == "idle"

        self._wait_for(idle, "slurmd", self.directory / "slurmd.log", self.directory / "slurmctld.log")

    def _start(self, name: str, command: list[str]) -> None:
        with open(self.directory / f"{name}.out", "w") as log:
            self._daemons.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))

    def _run(self, command: list[str], name: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{name} failed: {last_line(result.stderr) or f'exit {result.returncode}'}")

    def _wait_for(self, ready, name: str, *logs: Path, timeout: float = 60) -> None:
        """Until `ready()`; a daemon that exits, or the timeout, raises with the last line its logs hold."""
        deadline = time.monotonic() + timeout
        while not ready():
            exited = next((daemon for daemon in self._daemons if daemon.poll() is not None), None)
            if exited is not None or time.monotonic() > deadline:
                culprit = Path(exited.args[0]).name if exited is not None else name
                why = "exited" if exited is not None else f"not ready after {timeout:.0f} s"
                lines = [last_line(path.read_text(errors="replace")) for path in
                         [self.directory / f"{culprit}.out", *logs] if path.exists()]
                raise SlurmUnavailable(f"{culprit} {why}: {next(filter(None, lines), 'no log line')}")
            time.sleep(0.2)


def last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
