"""The wheel carries what an installed notifyq needs: the SQL files, py.typed, the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.timeout(120)


def test_wheel_ships_sql_and_typing(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("notifyq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in (ROOT / "sql").rglob("*.sql"):
        assert f"notifyq/sql/{sql.relative_to(ROOT / 'sql')}" in names
    assert "notifyq/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "notifyq = notifyq.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_python_dash_m_and_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "notifyq", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    for command in ("serve", "migrate", "check", "enqueue", "dev"):
        assert command in done.stdout
