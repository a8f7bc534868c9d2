"""Schema migrations: numbered, append-only files in `sql/migrations/NNNN_name.sql`.

`apply()` takes a transaction-scoped advisory lock, creates the ledger if needed, and applies every
migration the ledger lacks, in order, recording each, all in one transaction: two `notifyq migrate`
at once serialize on the lock and the second finds nothing to do. The daemon refuses to start on a
schema that lacks a migration it knows, or that has one it does not know (a newer notifyq ran there).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from notifyq import queries
from notifyq.errors import SchemaError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    pending: list[Migration]
    unknown: list[str]
    changed: list[str]

    @property
    def current(self) -> bool:
        return not (self.pending or self.unknown or self.changed)

    def problem(self) -> str | None:
        """One line that says what is wrong, or None on a current schema."""
        if self.unknown:
            return (
                f"schema is newer than this notifyq: unknown migration(s) {', '.join(self.unknown)};"
                " upgrade notifyq"
            )
        if self.pending:
            names = ", ".join(m.label for m in self.pending)
            return f"schema is older than this notifyq: missing migration(s) {names}; run `notifyq migrate`"
        if self.changed:
            return (
                f"migration(s) {', '.join(self.changed)} differ from the applied version"
                " (checksum mismatch); migrations are append-only"
            )
        return None


def available(folder: Path | None = None) -> list[Migration]:
    """The migrations shipped with this notifyq, in order."""
    root = folder or queries.sql_root() / "migrations"
    found: list[Migration] = []
    for path in sorted(root.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise SchemaError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def _applied(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    present = await conn.fetchval(queries.get("ledger_exists"))
    if not present:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(queries.get("ledger_applied"))
    return rows


async def status(conn: asyncpg.Connection, known: list[Migration] | None = None) -> SchemaStatus:
    """Compare the ledger with the migrations this notifyq ships."""
    known = available() if known is None else known
    by_version = {m.version: m for m in known}
    applied = await _applied(conn)
    seen = {r["version"] for r in applied}
    unknown = [f"{r['version']:04d}_{r['name']}" for r in applied if r["version"] not in by_version]
    changed = [
        by_version[r["version"]].label
        for r in applied
        if r["version"] in by_version and by_version[r["version"]].checksum != r["checksum"]
    ]
    pending = [m for m in known if m.version not in seen]
    return SchemaStatus(pending=pending, unknown=unknown, changed=changed)


async def ensure_current(conn: asyncpg.Connection) -> None:
    """Raise SchemaError naming the missing or unknown migration unless the schema is current."""
    problem = (await status(conn)).problem()
    if problem:
        raise SchemaError(problem)


async def apply(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration in one transaction; returns what was applied."""
    known = available()
    async with conn.transaction():
        await conn.execute(queries.get("migrate_lock"))
        await conn.execute(queries.get("ledger_bootstrap"))
        state = await status(conn, known)
        if state.unknown:
            raise SchemaError(state.problem() or "unknown migrations")
        for migration in state.pending:
            await conn.execute(migration.sql)
            await conn.execute(
                queries.get("ledger_record"), migration.version, migration.name, migration.checksum
            )
        return state.pending


def render_sql(pending: list[Migration]) -> str:
    """The script `notifyq migrate --sql` prints: what apply() would run, for a DBA to review or run."""
    if not pending:
        return "-- notifyq: the schema is current; nothing to apply.\n"
    parts = [
        "BEGIN;",
        queries.get("migrate_lock") + ";",
        queries.get("ledger_bootstrap") + ";",
        # The ledger's one INSERT, prepared, so the script records migrations with the same statement.
        f"PREPARE notifyq_ledger_record(int, text, text) AS {queries.get('ledger_record')};",
    ]
    for m in pending:
        parts.append(f"\n-- migration {m.label}\n{m.sql.strip()}")
        # Names match ^[a-z0-9_]+$ and checksums are hex (see load()): safe as literals.
        parts.append(f"EXECUTE notifyq_ledger_record({m.version}, '{m.name}', '{m.checksum}');")
    parts.append("DEALLOCATE notifyq_ledger_record;")
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"
