"""Test hosts as Linux network namespaces on one private link, so a cluster's processes talk over a real network.

Each host has its own address on a bridge that lives in a switch namespace, its own loopback and no other route:
traffic stays inside. Nothing in the calling namespace changes, and `private_network` removes all of it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.0"  # private; every network gets its own bridge, so parallel runs may use the same addresses


def ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here (no `ip`, not root, no bridge or veth devices), or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command to make test hosts (Debian: apt-get install iproute2)"
    probe = f"gm-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as error:
        return f"cannot make network namespaces for test hosts (they need root): {error}"
    try:
        ip("-n", probe, "link", "add", "name", "probe-bridge", "type", "bridge")
        ip("-n", probe, "link", "add", "name", "probe-a", "type", "veth", "peer", "name", "probe-b")
        ip("netns", "exec", probe, "true")
    except RuntimeError as error:
        return f"cannot make test hosts: {error}"
    finally:
        ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """One test host: a network namespace with an address, and a folder standing for its local disk."""

    name: str
    namespace: str
    address: str
    local_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def temp_dir(self) -> Path:
        """The host's TMPDIR: what its processes think of as local scratch space."""
        return self.local_dir / "tmp"

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def start(self, argv: list[str], env: dict[str, str], log_name: str, **popen) -> subprocess.Popen:
        """Run a program on this host with the host's TMPDIR; its output goes to `<local_dir>/<log_name>.log`
        unless `popen` sends it elsewhere."""
        with open(self.log_path(log_name), "ab") as handle:
            popen.setdefault("stdout", handle)
            popen.setdefault("stderr", handle)
            process = subprocess.Popen(self.command(argv), env=env | {"TMPDIR": str(self.temp_dir)}, **popen)
        self.processes.append(process)
        return process

    def log_path(self, log_name: str) -> Path:
        return self.local_dir / f"{log_name}.log"

    def pids(self) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespace], check=False, capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split()]

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM every process of the host, then SIGKILL whatever is left after the grace period."""
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                with _gone_already():
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        for process in self.processes:
            with _gone_already():
                process.wait(timeout=5)


@contextmanager
def _gone_already() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


@contextmanager
def private_network(names: list[str], directory: Path) -> Iterator[dict[str, Host]]:
    """Hosts named `names`, with addresses SUBNET.1, .2, ... on one bridge, and local folders under `directory`.

    Namespace names carry a suffix unique to this call, so parallel and leftover runs never meet. On exit every
    process in the hosts is stopped and every namespace deleted, whatever happened inside.
    """
    suffix = f"{os.getpid()}-{secrets.token_hex(3)}"
    switch = f"gm-switch-{suffix}"
    hosts = {
        name: Host(name, f"gm-{name}-{suffix}", f"{SUBNET}.{index}", directory / name)
        for index, name in enumerate(names, start=1)
    }
    with ExitStack() as cleanup:
        ip("netns", "add", switch)
        cleanup.callback(ip, "netns", "del", switch)
        ip("-n", switch, "link", "add", "name", "bridge", "type", "bridge")
        ip("-n", switch, "link", "set", "bridge", "up")
        for host in hosts.values():
            ip("netns", "add", host.namespace)
            cleanup.callback(ip, "netns", "del", host.namespace)
            cleanup.callback(host.stop, grace_seconds=10.0)
            port = f"port-{host.name}"[:15]
            ip("-n", switch, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
            ip("-n", switch, "link", "set", port, "master", "bridge")
            ip("-n", switch, "link", "set", port, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.namespace, "link", "set", "eth0", "up")
            host.temp_dir.mkdir(parents=True)
        yield hosts
