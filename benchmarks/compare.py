"""compare: notifyq and its peers side by side in one run on this machine.

    python -m benchmarks.compare [--jobs 20000] [--procrastinate-jobs 5000] [--runs 3] [--samples 200]
                                 [--concurrency 50]

- drain: every system in its default and best configuration, the runs interleaved (run 1 of each, then
  run 2 of each, ...) so that a drift in the machine's state hits them all alike; median of runs.
- wake latency: the same configurations, plus the floor (plain asyncpg INSERT + NOTIFY + one claim).
- floor: pgbench running notifyq's claim and complete statements with no Python in the loop.

Prints a Markdown table and writes the whole result as JSON (benchmarks/results/compare.json).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import emit, run
from benchmarks.drain import one_run
from benchmarks.floor import floor_rate
from benchmarks.wake_latency import floor_latency, notifyq_latency, summary

# notifyq's own configurations: its defaults (with the shared concurrency), which are also its best
# measured here (prefetch 50 or 100, prefetch_max 1000: all within the run-to-run noise), and a fixed
# buffer of 50, the best before the buffer sized itself, to show what that change is worth.
NOTIFYQ_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "fixed_prefetch_50": {"prefetch": 50, "prefetch_max": 0},
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--procrastinate-jobs", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    systems = [("notifyq", c) for c in NOTIFYQ_CONFIGS] + [
        (p, c) for p in peers.PEERS for c in peers.CONFIGS[p]
    ]
    drains: dict[str, list[float]] = {f"{s}/{c}": [] for s, c in systems}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(args.runs):
            for system, config in systems:
                if system == "notifyq":
                    rate = await one_run(args.jobs, args.concurrency, folder, **NOTIFYQ_CONFIGS[config])
                else:
                    jobs = args.procrastinate_jobs if system == "procrastinate" else args.jobs
                    rate = await peers.drain(system, config, jobs, args.concurrency)
                drains[f"{system}/{config}"].append(rate)
        latency: dict[str, dict[str, float]] = {}
        for system, config in systems:
            if system == "notifyq":
                samples = await notifyq_latency(args.samples, folder, **NOTIFYQ_CONFIGS[config])
            else:
                samples = await peers.wake_latency(system, config, args.samples)
            latency[f"{system}/{config}"] = summary(samples)
        latency["floor (asyncpg INSERT + NOTIFY + claim)"] = summary(await floor_latency(args.samples))
        pgbench_floor = {
            f"clients_{clients}": round(await floor_rate(args.concurrency, clients, 10, 600_000, folder))
            for clients in (1, 2)
        }
    result = {
        "jobs": args.jobs,
        "procrastinate_jobs": args.procrastinate_jobs,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "configs": {"notifyq": NOTIFYQ_CONFIGS, **{p: peers.CONFIGS[p] for p in peers.PEERS}},
        "drain_jobs_per_s": {
            k: {"runs": [round(r) for r in v], "median": round(statistics.median(v))}
            for k, v in drains.items()
        },
        "wake_latency_ms": latency,
        "pgbench_floor_claim_complete_jobs_per_s": pgbench_floor,
    }
    emit("compare", result)
    print(table(result))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| system/config | drain jobs/s (median) | runs | wake p50 ms | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, lat in result["wake_latency_ms"].items():
        drain = result["drain_jobs_per_s"].get(name)
        rate = f"{drain['median']:,}" if drain else "-"
        runs = ", ".join(f"{r:,}" for r in drain["runs"]) if drain else "-"
        lines.append(
            f"| {name} | {rate} | {runs} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} |"
        )
    floor = result["pgbench_floor_claim_complete_jobs_per_s"]
    lines.append(f"\npgbench floor, claim + complete, batch {result['concurrency']}: {floor}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
