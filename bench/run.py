"""Run the benchmark suite and write BENCHMARKS.md.

Each ``bench/bench_<area>.py`` exposes ``TITLE`` (str) and ``run() -> list[dict]``; a row is
``{"what": str, "ours": float, "baseline": float, "baseline_name": str, "unit": str,
   "ratio": float, "target": str, "met": bool, "note": str}``, where ``ratio`` is the figure the
target speaks of (e.g. baseline time / our time), measured in the same run because these machines
are noisy. ``python -m bench.run --only tracing,store`` runs a subset and merges it into the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path


BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"


def _fmt(x) -> str:
    if x is None:  # a projection row: no baseline, ratio or verdict
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def spread(xs) -> dict:
    """``{"min", "median", "max", "n"}`` of repeated measurements (a row's ``reps`` entries)."""
    xs = sorted(float(x) for x in xs)
    return {"min": xs[0], "median": statistics.median(xs), "max": xs[-1], "n": len(xs)}


def reps(**sides) -> dict:
    """A row's ``reps`` entry: the :func:`spread` of each side's repeated measurements."""
    return {name: spread(xs) for name, xs in sides.items()}


def _spread_cell(row: dict) -> str:
    """min / median / max of each measured side of a row, when the bench recorded its repetitions."""
    reps = row.get("reps") or {}
    parts = [f"{side} {_fmt(v['min'])} / {_fmt(v['median'])} / {_fmt(v['max'])} (n={v['n']})"
             for side, v in reps.items()]
    return "; ".join(parts) or "—"


def _machine_lines(results: dict) -> list[str]:
    machines = sorted({r.get("cpu") or r["machine"].split(", load average")[0] for r in results.values()})
    return [f"Machine: {m}" + ("" if len(machines) == 1 else " (some sections)") for m in machines]


def render(results: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        *_machine_lines(results),
        "",
        "Written by `make bench` (`python -m bench.run`). Every ratio compares two measurements taken in the",
        "same run on the same data, so it holds on a noisy machine where absolute times do not. Where a",
        "section repeats its measurements, the table gives the median and \"met\" is judged on it; the",
        "spread column gives min / median / max.",
        "",
    ]
    for area in sorted(results):
        r = results[area]
        lines += [f"## {r['title']}", "", f"Run {r['when']} on {r['machine']} ({r['seconds']:.0f} s).", ""]
        lines += ["| what | ours | baseline | ratio | target | met | spread (min / median / max) | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            unit = row.get("unit", "")
            lines.append(
                f"| {row['what']} | {_fmt(row['ours'])} {unit} | {_fmt(row['baseline'])} {unit} ({row['baseline_name']}) "
                f"| {_fmt(row['ratio'])} | {row['target']} | {'' if row['met'] is None else 'yes' if row['met'] else 'no'} "
                f"| {_spread_cell(row)} | {row.get('note', '')} |"
            )
        lines.append("")
        lines += [f"- {note}" for note in r.get("notes", [])]
        if r.get("notes"):
            lines.append("")
    return "\n".join(lines)


def _read() -> dict:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}


def _merge(area: str, entry: dict) -> dict:
    """Re-read results.json and replace one area under a file lock, so concurrent runs of other
    areas (``--only``) never overwrite each other's rows; the write is atomic (rename)."""
    import fcntl
    import os

    with open(RESULTS_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _read()
        results[area] = entry
        tmp = RESULTS_JSON.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, RESULTS_JSON)
    return results


def _load_note() -> str:
    """The 1-minute load average at the end of an area: a busy machine explains noisy absolute times."""
    import os

    return f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--only", default="", help="comma-separated areas (file suffixes after bench_)")
    args = ap.parse_args(argv)
    areas = sorted(p.stem[len("bench_"):] for p in BENCH_DIR.glob("bench_*.py"))
    if args.only:
        wanted = {a.strip() for a in args.only.split(",")}
        areas = [a for a in areas if a in wanted]
    from resi_dual.runtime import machine_line

    for area in areas:
        mod = importlib.import_module(f"bench.bench_{area}")
        print(f"== {area}: {mod.TITLE}", flush=True)
        t0 = time.perf_counter()
        rows = mod.run()
        for row in rows:
            print("  ", {k: _fmt(v) for k, v in row.items()}, flush=True)
        cpu = machine_line()  # CPU model and flags, torch's thread count (as the section leaves it)
        entry = {
            "title": mod.TITLE,
            "rows": rows,
            "notes": list(getattr(mod, "NOTES", [])),
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": cpu + _load_note(),
            "cpu": cpu,
            "seconds": time.perf_counter() - t0,
        }
        _merge(area, entry)
    Path(args.out).write_text(render(_read()))  # every area, including those written meanwhile by other runs
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
