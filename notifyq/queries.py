"""Named SQL statements, loaded once from the `sql/queries/*.sql` files.

A file holds sections that start with `-- name: NAME :kind`; the text up to the next such line is the
statement. Installed wheels carry the files as `notifyq/sql`; a source checkout reads the top-level
`sql/` folder.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*:(\w+)\s*$", re.MULTILINE)


def sql_root() -> Path:
    """The folder that holds `migrations/` and `queries/`."""
    packaged = Path(__file__).resolve().parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def parse(text: str) -> dict[str, str]:
    """Split one .sql file into its named statements."""
    found: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        name = mark.group(1)
        if name in found:
            raise ValueError(f"duplicate query name {name!r}")
        found[name] = "\n".join(lines).strip().rstrip(";")
    return found


@functools.cache
def load() -> dict[str, str]:
    """Every named statement of every file in `sql/queries/`."""
    found: dict[str, str] = {}
    for path in sorted((sql_root() / "queries").glob("*.sql")):
        for name, sql in parse(path.read_text()).items():
            if name in found:
                raise ValueError(f"query {name!r} defined twice (second in {path.name})")
            found[name] = sql
    return found


def get(name: str) -> str:
    """One named statement."""
    return load()[name]
