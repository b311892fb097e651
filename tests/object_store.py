"""A real S3-protocol server on loopback for the object-store tests: moto in server mode, as s3fs's own tests use.

The server is a separate process speaking HTTP on 127.0.0.1; Gristmill reaches it the way a user reaches any
S3-compatible store, through the standard `AWS_ENDPOINT_URL_S3` and credential variables, with no test hooks.
A server that cannot start fails the test with one line: it is never skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER = Path(sys.executable).with_name("moto_server")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    environment: dict[str, str]

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """Start moto_server on a free loopback port, point this process (and its children) at it, stop it after."""
    if not SERVER.exists():
        pytest.fail(f"{SERVER}: not installed; `pip install 'moto[server]'` (in the dev extras)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(os.devnull, "w")
    process = subprocess.Popen([str(SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {endpoint} (exit code {process.poll()})")
                time.sleep(0.1)
        environment = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        clear_filesystem_cache()
        try:
            yield S3Server(endpoint, environment)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            clear_filesystem_cache()
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def clear_filesystem_cache() -> None:
    """fsspec keeps one S3 filesystem per set of options; one made before the server started points elsewhere."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
