"""The mutation gate: break each promise's mechanism on purpose and prove a test notices.

    python -m tests.mutations                 # every entry of tests/mutations/catalogue.py
    python -m tests.mutations --only NAME ... # some entries
    python -m tests.mutations --list          # the catalogue, without running it

For each entry, the runner copies the checkout (the files git tracks, plus untracked ones it does not
ignore) to a scratch folder, applies the entry's edits there, and runs only the tests the entry names,
stopping at the first failure. A failing run kills the mutation; a passing run means the promise has no
guard, and the gate fails. An edit whose text is not found exactly once fails the gate too: the catalogue
must follow the code. Before the mutations, the same tests run once on the unmutated copy (skip with
--no-baseline where the suite has just passed), so that a test that fails anyway cannot pass for a kill.
The report (mutation, promise, killed by) is printed and written to tests/mutations/results/report.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutations.catalogue import CATALOGUE, Mutation

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "mutations" / "results"
# A hung run is caught by each test's own pytest-timeout first; this only bounds the whole run.
RUN_LIMIT_SECONDS = 600
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


@dataclass
class Result:
    mutation: Mutation
    verdict: str  # killed, SURVIVED, or ERROR
    killed_by: str
    seconds: float


def scratch_copy() -> Path:
    """The checkout as git sees it, in a fresh folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    target = Path(tempfile.mkdtemp(prefix="notifyq-mutant-"))
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def mutated(root: Path, mutation: Mutation) -> dict[Path, tuple[str, str]]:
    """(original, mutated) text of every file the edits touch, computed in memory. Raises LookupError if
    an edit's text is not there exactly once."""
    texts: dict[Path, tuple[str, str]] = {}
    for edit in mutation.edits:
        path = root / edit.path
        if not path.is_file():
            raise LookupError(f"{mutation.name}: no file {edit.path}")
        original, text = texts.get(path) or (path.read_text(),) * 2
        start, end = section(text, edit.within) if edit.within else (0, len(text))
        found = text[start:end].count(edit.old)
        if found != 1:
            where = f"{edit.path} ({edit.within})" if edit.within else edit.path
            raise LookupError(f"{mutation.name}: {where} holds the text to replace {found} times, not once")
        texts[path] = (original, text[:start] + text[start:end].replace(edit.old, edit.new) + text[end:])
    return texts


def apply(copy: Path, mutation: Mutation) -> dict[Path, str]:
    """Apply every edit; returns the original texts. Raises if an edit's text is not there exactly once."""
    texts = mutated(copy, mutation)
    for path, (_, text) in texts.items():
        path.write_text(text)
    return {path: original for path, (original, _) in texts.items()}


def section(text: str, name: str) -> tuple[int, int]:
    """Where the named statement `-- name: NAME` of a .sql file starts and ends."""
    match = re.search(rf"^-- name: {re.escape(name)} ", text, re.MULTILINE)
    if match is None:
        raise LookupError(f"no statement named {name}")
    following = re.search(r"^-- name: ", text[match.end() :], re.MULTILINE)
    return match.start(), match.end() + following.start() if following else len(text)


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def run_tests(copy: Path, tests: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-seed=0",
        *tests,
    ]
    try:
        done = subprocess.run(
            cmd,
            cwd=copy,
            # Bytecode written and reused: a copy serves many entries, and compiling notifyq and the
            # tests afresh in every run (PYTHONDONTWRITEBYTECODE, set on some CI machines) cost seconds.
            env={**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "", **env},
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT_SECONDS,
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = -1, f"run exceeded {RUN_LIMIT_SECONDS}s: {exc}"
    return code, output, time.monotonic() - started


def judge(mutation: Mutation, code: int, output: str, seconds: float) -> Result:
    if code == 1:
        failed = _FAILED.findall(output)
        return Result(mutation, "killed", failed[0] if failed else "(a failing test)", seconds)
    if code == -1:
        return Result(mutation, "killed", "(the run hung past the limit)", seconds)
    if code == 0:
        return Result(mutation, "SURVIVED", "", seconds)
    return Result(mutation, "ERROR", f"pytest exit {code}: {output.strip().splitlines()[-1:]}", seconds)


def report(results: list[Result]) -> str:
    lines = [
        "| mutation | promise | verdict | killed by | s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.mutation.name} | {r.mutation.promise} | {r.verdict} | {r.killed_by} | {r.seconds:.0f} |"
        )
    killed = sum(r.verdict == "killed" for r in results)
    lines.append("")
    lines.append(f"mutation gate: killed {killed} of {len(results)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these entries only")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="entries run at once, each in a scratch copy of its own (most of an entry's time is waiting on"
        " Postgres and on daemon processes: 2 on 2 cores took the gate from 10.5 to about 6 minutes)",
    )
    parser.add_argument(
        "--check-edits", action="store_true", help="only check that every edit applies, run no test"
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="run every N-th entry from the K-th (0 <= K < N): CI runs a quarter of the gate per commit,"
        " rotating with the commit, to stay within its time budget",
    )
    args = parser.parse_args(argv)

    chosen = [m for m in CATALOGUE if not args.only or m.name in args.only]
    if args.shard:
        try:
            index, count = (int(part) for part in args.shard.split("/"))
            if not 0 <= index < count:
                raise ValueError
        except ValueError:
            parser.error(f"--shard: K/N with 0 <= K < N (got {args.shard!r})")
        chosen = chosen[index::count]
    unknown = set(args.only or ()) - {m.name for m in CATALOGUE}
    if unknown:
        parser.error(f"no such mutation: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.promise}\n    tests: {' '.join(m.tests)}")
        return 0

    copies = [scratch_copy() for _ in range(max(1, args.jobs))]
    copy = copies[0]
    try:
        if args.check_edits:
            problems = []
            for m in chosen:
                try:
                    restore(apply(copy, m))
                except LookupError as exc:
                    problems.append(str(exc))
            print("\n".join(problems) or f"all {len(chosen)} entries apply")
            return 1 if problems else 0
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            env = {k: v for m in chosen for k, v in m.env.items()}
            print(f"baseline: {len(tests)} targeted tests on the unmutated code", flush=True)
            code, output, seconds = run_tests(copy, tests, env)
            if code != 0:
                print(output[-4000:])
                print(
                    f"baseline failed (exit {code}) in {seconds:.0f}s: the gate proves nothing until it passes"
                )
                return 1
            print(f"baseline passed in {seconds:.0f}s", flush=True)
        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def one(m: Mutation) -> Result:
            mine = free.get()
            try:
                try:
                    originals = apply(mine, m)
                except LookupError as exc:
                    result = Result(m, "ERROR", str(exc), 0.0)
                else:
                    try:
                        code, output, seconds = run_tests(mine, list(m.tests), m.env)
                    finally:
                        restore(originals)
                    result = judge(m, code, output, seconds)
            finally:
                free.put(mine)
            print(f"{m.name}: {result.verdict} {result.killed_by} ({result.seconds:.0f}s)", flush=True)
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(copies)) as pool:
            results = list(pool.map(one, chosen))  # in catalogue order, whatever order they finish in
    finally:
        for c in copies:
            shutil.rmtree(c, ignore_errors=True)

    text = report(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if all(r.verdict == "killed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
