"""encode_store's collectives with two ranks, as threads of this process (a stand-in for the gloo group
with the same broadcast/gather contract): every rank makes the same collectives in the same order on
every path, and rank 0's failures reach every rank. The real 2-process torchrun run is in
test_processes.py."""

import threading
import warnings
from pathlib import Path

import pytest

from resi_dual.data import load_dataset
from resi_dual.errors import ResiDualError
from resi_dual.store.writer import EncodeConfig, encode_store

pytestmark = pytest.mark.integration  # a real (tiny) model traced into stores on disk


class ThreadGroup:
    """``Group``'s interface for the ranks of ``shared`` (one thread each); logs every collective."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.world_size, self.dist, self._s = rank, shared["n"], None, shared

    def _sync(self, name: str, put) -> list:
        s = self._s
        s["log"][self.rank].append(name)
        put(s)
        s["barrier"].wait()  # a rank that skips a collective leaves the other here: BrokenBarrierError
        out = list(s["slots"])
        s["barrier"].wait()
        return out

    def broadcast(self, obj):
        return self._sync("broadcast", lambda s: s["slots"].__setitem__(0, obj) if self.rank == 0 else None)[0]

    def gather(self, obj) -> list:
        return self._sync("gather", lambda s: s["slots"].__setitem__(self.rank, obj))


def _run_ranks(models, ds, out: Path, cfg: EncodeConfig) -> tuple[list, dict]:
    """encode_store on len(models) ranks at once (a model each: tracing hooks are per model)."""
    n = len(models)
    shared = {"n": n, "slots": [None] * n, "log": [[] for _ in range(n)], "barrier": threading.Barrier(n, timeout=120)}
    results: list = [None] * n

    def rank(r):
        try:
            results[r] = encode_store(models[r], ds, out, cfg, ThreadGroup(r, shared))
        except Exception as e:  # noqa: BLE001 - compared below
            results[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results, shared


@pytest.fixture(scope="module")
def second_model(tiny_spec):
    from resi_dual import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(tiny_spec)


def test_a_rank_without_chunks_and_a_resume_match_one_process(tmp_path, tiny_model, second_model, store_bytes,
                                                              stable_manifest):
    ds = load_dataset("animal-mnist", "test")
    for limit, chunk_rows in ((8, 8), (40, 8)):  # 1 chunk (rank 1 has none), then 5
        cfg = EncodeConfig(limit=limit, batch_size=4, chunk_rows=chunk_rows, progress=False)
        ref, out = tmp_path / f"ref{limit}", tmp_path / f"two{limit}"
        encode_store(tiny_model, ds, ref, cfg)
        results, shared = _run_ranks([tiny_model, second_model], ds, out, cfg)
        assert not any(isinstance(r, Exception) for r in results), results
        assert shared["log"][0] == shared["log"][1] == ["broadcast", "gather", "broadcast"]
        assert store_bytes(out) == store_bytes(ref) and stable_manifest(out) == stable_manifest(ref)
    (out / "manifest.json").unlink()  # a killed run: the manifest and chunk 3 missing, chunk 1 corrupt
    (out / "chunks" / "000003.safetensors").unlink()
    bad = out / "chunks" / "000001.safetensors"
    bad.write_bytes(bad.read_bytes()[:-8] + b"\0" * 8)
    results, shared = _run_ranks([tiny_model, second_model], ds, out, cfg)
    assert not any(isinstance(r, Exception) for r in results), results
    assert shared["log"][0] == shared["log"][1] == ["broadcast", "gather", "broadcast"]
    assert store_bytes(out) == store_bytes(ref) and stable_manifest(out) == stable_manifest(ref)
    results, shared = _run_ranks([tiny_model, second_model], ds, out, cfg)  # complete: both ranks stop early
    assert shared["log"][0] == shared["log"][1] == ["broadcast"]


@pytest.mark.parametrize("where", ["plan", "manifest"])
def test_a_filesystem_error_on_rank_0_is_raised_on_every_rank(tmp_path, tiny_model, second_model, monkeypatch, where):
    import errno

    import resi_dual.store.writer as writer

    def disk_full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writer, "ensure_out_dir" if where == "plan" else "finalize", disk_full)  # rank 0 only
    ds = load_dataset("animal-mnist", "test")
    results, shared = _run_ranks([tiny_model, second_model], ds, tmp_path / "s",
                                 EncodeConfig(limit=16, batch_size=4, chunk_rows=8, progress=False))
    assert all(isinstance(r, ResiDualError) for r in results), results
    assert str(results[0]) == str(results[1]) == f"cannot write {tmp_path / 's'}: the disk is full"
    expected = ["broadcast"] if where == "plan" else ["broadcast", "gather", "broadcast"]
    assert shared["log"][0] == shared["log"][1] == expected
