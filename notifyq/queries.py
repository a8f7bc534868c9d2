"""Named SQL statements, loaded once from the `sql/queries/*.sql` files.

A file holds sections that start with `-- name: NAME :kind`; the text up to the next such line is the
statement. A section of kind `fragment` is not a statement but text that statements which must agree
share: `/* include: NAME */` in a statement stands for that fragment's text (River marks its shared
SQL the same way), so two statements cannot drift apart. Installed wheels carry the files as
`notifyq/sql`; a source checkout reads the top-level `sql/` folder.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*:(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"/\*\s*include:\s*(\w+)\s*\*/")


def sql_root() -> Path:
    """The folder that holds `migrations/` and `queries/`."""
    packaged = Path(__file__).resolve().parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def parse(text: str) -> dict[str, str]:
    """Split one .sql file into its named sections (statements and fragments), as written."""
    return {name: sql for name, (_, sql) in _sections(text).items()}


def _sections(text: str) -> dict[str, tuple[str, str]]:
    """name -> (kind, text) for every section of one file."""
    found: dict[str, tuple[str, str]] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        name = mark.group(1)
        if name in found:
            raise ValueError(f"duplicate query name {name!r}")
        found[name] = (mark.group(2), "\n".join(lines).strip().rstrip(";"))
    return found


@functools.cache
def load() -> dict[str, str]:
    """Every named statement of every file in `sql/queries/`, with its fragments included."""
    sections: dict[str, tuple[str, str]] = {}
    for path in sorted((sql_root() / "queries").glob("*.sql")):
        for name, section in _sections(path.read_text()).items():
            if name in sections:
                raise ValueError(f"query {name!r} defined twice (second in {path.name})")
            sections[name] = section
    fragments = {name: sql for name, (kind, sql) in sections.items() if kind == "fragment"}

    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise ValueError(f"no fragment named {name!r}")
        return fragments[name]

    return {name: _INCLUDE.sub(include, sql) for name, (kind, sql) in sections.items() if kind != "fragment"}


def get(name: str) -> str:
    """One named statement."""
    return load()[name]
