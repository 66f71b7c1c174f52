"""`resi-dual encode` as real processes: SIGKILL + resume, and a 2-process torchrun (gloo) encode."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resi_dual.data import load_dataset
from resi_dual.store.disk import MANIFEST
from resi_dual.store.writer import EncodeConfig, encode_store


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _cmd(spec: str, out: Path, limit: int, chunk_rows: int = 8) -> list[str]:
    return ["encode", "--model", spec, "--dataset", "animal-mnist", "--split", "test", "--out", str(out),
            "--limit", str(limit), "--chunk-rows", str(chunk_rows), "--batch-size", "4", "--no-progress"]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_sigkill_at_a_random_point_then_resume_is_byte_identical(tmp_path, tiny_model, tiny_spec, store_bytes,
                                                                 stable_manifest):
    limit = 800  # 200 chunks of 4
    ds = load_dataset("animal-mnist", "test")
    encode_store(tiny_model, ds, tmp_path / "ref", EncodeConfig(limit=limit, batch_size=4, chunk_rows=4, progress=False))
    out = tmp_path / "s"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    proc = subprocess.Popen([sys.executable, "-m", "resi_dual", *_cmd(tiny_spec, out, limit, 4)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900  # start-up alone took minutes on a saturated shared machine
    # kill once a random number of chunks exist: a time-based point overshoots on a fast idle machine
    kill_after = rng.randint(1, 100)
    while proc.poll() is None:
        if (out / "chunks").is_dir() and len(list((out / "chunks").glob("*.safetensors"))) >= kill_after:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no chunk written within 15 minutes")
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill (seed {seed}): {proc.stderr.read()[-500:]}"
    assert not (out / MANIFEST).exists()
    n_before = len(list((out / "chunks").glob("*.safetensors")))
    assert 0 < n_before < 200, f"seed {seed}"
    done = subprocess.run([sys.executable, "-m", "resi_dual", *_cmd(tiny_spec, out, limit, 4)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "resuming" in done.stderr
    assert store_bytes(out) == store_bytes(tmp_path / "ref"), f"seed {seed}"
    assert stable_manifest(out) == stable_manifest(tmp_path / "ref")


def _rank_logs(logs: Path) -> str:
    """The end of every rank's stderr under torchrun's --log-dir (<run>/attempt_<n>/<rank>/stderr.log)."""
    parts = [f"--- rank {p.parent.name} ({p.parent.parent.name}) ---\n{p.read_text(errors='replace')[-1500:]}"
             for p in sorted(logs.glob("*/attempt_*/*/stderr.log"))]
    return "\n".join(parts) or f"(no rank logs under {logs})"


def test_two_process_torchrun_equals_single_process(tmp_path, tiny_model, tiny_spec, store_bytes, stable_manifest):
    limit = 60
    ds = load_dataset("animal-mnist", "test")
    encode_store(tiny_model, ds, tmp_path / "ref", EncodeConfig(limit=limit, batch_size=4, chunk_rows=8, progress=False))
    out = tmp_path / "dist"
    logs = tmp_path / "logs"  # each rank's own stdout/stderr: torchrun's stderr ends in its own traceback
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--log-dir", str(logs), "--redirects", "3", "-m", "resi_dual", *_cmd(tiny_spec, out, limit, 8)],
        cwd=tmp_path, env={**_env(), "PYTHONFAULTHANDLER": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, _rank_logs(logs) + "\n--- torchrun ---\n" + run.stderr[-1500:]
    m = stable_manifest(out)
    full = __import__("json").loads((out / MANIFEST).read_text())
    assert full["run"]["world_size"] == 2
    assert store_bytes(out) == store_bytes(tmp_path / "ref")
    assert m == stable_manifest(tmp_path / "ref")
