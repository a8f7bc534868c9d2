"""What the suite needs from the machine, made ready (or named) before the first test runs.

The README's test command is all a fresh machine needs: this runs at the start of every pytest session
(tests/conftest.py). It starts the local Postgres cluster when NOTIFYQ_TEST_ADMIN_DSN points at this
machine and nothing answers, and installs the operations tests' tools (promtool and prometheus from
Debian's `prometheus` package, systemd-analyze from `systemd`) when they are missing and it may (root,
with apt-get). Where it cannot, it stops the session with one line that says what is missing and the
command that provides it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support import ADMIN_HOST, ADMIN_PORT

TOOLS = {"promtool": "prometheus", "prometheus": "prometheus", "systemd-analyze": "systemd"}


def ensure() -> str | None:
    """Make the machine ready; returns what is still missing, as one line, or None."""
    problems = [p for p in (_postgres(), _tools()) if p]
    return "; ".join(problems) or None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _postgres() -> str | None:
    if _answers(ADMIN_HOST, ADMIN_PORT):
        return None
    local = ADMIN_HOST in ("127.0.0.1", "localhost", "::1") and ADMIN_PORT == 5432  # the packaged cluster
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if local else []
    if versions and shutil.which("pg_ctlcluster") and os.geteuid() == 0:
        version = versions[-1].parent.name
        print(f"tests: starting the local Postgres cluster {version}/main", flush=True)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            check=False,
        )
        for _ in range(60):
            if _answers(ADMIN_HOST, ADMIN_PORT):
                return None
            time.sleep(0.5)
    return (
        f"no Postgres answers at {ADMIN_HOST}:{ADMIN_PORT}: start one "
        "(pg_ctlcluster --skip-systemctl-redirect 15 main start; apt-get install postgresql if there is none) "
        "or point NOTIFYQ_TEST_ADMIN_DSN at one"
    )


def _tools() -> str | None:
    packages = sorted({TOOLS[t] for t in TOOLS if shutil.which(t) is None})
    if not packages:
        return None
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"tests: installing {' '.join(packages)} for the operations tests", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, env=env)
        subprocess.run(command, capture_output=True, check=False, env=env)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} missing: run `{' '.join(command)}` as root"
