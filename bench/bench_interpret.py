"""TextSpan and SOMP: ours vs. straightforward implementations of the papers' algorithms.

Data: 5,000 × 768 samples built from 40 planted atoms of a 3,500-atom random dictionary (unit rows)
with a decaying spectrum, plus a rank-120 nuisance part and isotropic noise. Each of the four runs
(ours / reference × SOMP / TextSpan) is a fresh child process on the same seeded data, so one run's
freed-but-retained memory cannot hide the next one's peak; peak memory is the rise of the child's
high-water mark (VmHWM) over its resident size just before the call, which counts numpy and torch
allocations alike (tracemalloc does not see torch's allocator). Everything runs single-threaded
(OMP/OpenBLAS/MKL = 1, torch.set_num_threads(1)): on a shared 2-core machine a contended thread pool
makes small LAPACK calls 20–40× slower and would measure the neighbours, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

TITLE = "Text interpretation: SOMP (k=64) and TextSpan (k=20, rank 80), 5,000 × 768, 3,500 atoms"

N, D, M = 5000, 768, 3500


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    dic = rng.standard_normal((M, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    planted = sorted(rng.choice(M, 40, replace=False).tolist())
    coef = rng.standard_normal((N, 40)) * np.geomspace(6.0, 0.6, 40)
    nuisance = (rng.standard_normal((N, 120)) * np.geomspace(0.5, 0.05, 120)) @ (rng.standard_normal((120, D)) / np.sqrt(D))
    x = coef @ dic[planted] + nuisance + 0.02 * rng.standard_normal((N, D)) + rng.standard_normal(D) * 0.5
    return x, dic, planted


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn):
    """(result, seconds, peak extra MB) of ``fn()`` in this process."""
    before = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t0
    peak = max(0, _rss_kb("VmHWM") - before) / 1024
    return out, sec, peak


def one(job: str) -> dict:
    """Run one job (``somp-ours``, ``somp-ref``, ``textspan-ours``, ``textspan-ref``) here."""
    from resi_dual.interpret.decompose import somp, text_span
    from resi_dual.interpret.reference import somp_reference, text_span_reference

    torch.set_num_threads(1)
    x, dic, planted = make_data()
    # warm both libraries' code paths on a tiny problem, so import/first-call costs are not timed
    somp(x[:50, :16], dic[:20, :16], 2), text_span(x[:50, :16], dic[:20, :16], 2, rank=4)
    jobs = {
        "somp-ours": lambda: somp(x, dic, 64).indices,
        "somp-ref": lambda: somp_reference(x, dic, 64)[0],
        "textspan-ours": lambda: text_span(x, dic, 20, rank=80).indices,
        "textspan-ref": lambda: text_span_reference(x, dic, 20, 80),
    }
    picks, sec, peak = measure(jobs[job])
    return {"job": job, "picks": [int(i) for i in picks], "seconds": sec, "peak_mb": peak, "planted": planted}


def _child(job: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "bench.bench_interpret", "--one", job], cwd=root, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    r = {job: _child(job) for job in ("somp-ours", "somp-ref", "textspan-ours", "textspan-ref")}
    rows = []
    for algo, k, target, base_name in (("somp", 64, 10, "refit lstsq each step"),
                                       ("textspan", 20, 5, "full SVD + full projections")):
        ours, ref = r[f"{algo}-ours"], r[f"{algo}-ref"]
        same = ours["picks"] == ref["picks"]
        ratio = ref["seconds"] / ours["seconds"]
        note = f"identical picks: {same}"
        if algo == "somp":
            note += f"; first 40 picks = the 40 planted atoms: {sorted(ours['picks'][:40]) == ours['planted']}"
        label = "SOMP k=64" if algo == "somp" else "TextSpan k=20 r=80"
        rows.append(dict(what=f"{label} time", ours=ours["seconds"], baseline=ref["seconds"], baseline_name=base_name,
                         unit="s", ratio=ratio, target=f"≥ {target}×", met=bool(ratio >= target and same), note=note))
        rows.append(dict(what=f"{label} peak memory", ours=ours["peak_mb"], baseline=ref["peak_mb"],
                         baseline_name=base_name, unit="MB", ratio=ref["peak_mb"] / max(ours["peak_mb"], 1e-9),
                         target="ours ≤ 500 MB", met=bool(ours["peak_mb"] <= 500), note="rise of VmHWM, fresh process"))
    return rows


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", default=None)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one)))
    else:
        for row in run():
            print(row)
