"""Fault corpus, stores: corrupted, truncated, edited and half-deleted stores are named with the repair,
a resume re-encodes bad chunks, and two writers on one folder are kept apart by the lock."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fault_helpers import assert_one_line_error, run_cli, run_sub, snapshot


def _encode_argv(world, out, split="test"):
    return ["encode", "--model", world["spec"], "--dataset", f"folder:{world['data']}", "--split", split,
            "--out", out, "--dtype", "float32", "--chunk-rows", "4", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """A test-split store encoded by the CLI (its manifest records the command), and its bytes."""
    out = tmp_path_factory.mktemp("ref") / "s"
    r = run_sub(_encode_argv(world, out))
    assert r.returncode == 0, r.stderr
    return out


def _copy(reference, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(reference, dst)
    return dst


def _flip(path, at=-3):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_accepts_a_good_store(reference, capsys):
    rc, out, err = run_cli(["verify", reference], capsys)
    assert rc == 0 and "ok" in out and err == ""


def test_flipped_bytes_are_found_by_verify_and_repaired_by_encode(world, reference, tmp_path, capsys):
    s = _copy(reference, tmp_path)
    _flip(s / "chunks" / "000001.safetensors")
    before = snapshot(s)
    rc, _, err = run_cli(["verify", s], capsys)
    line = assert_one_line_error(rc, err, "chunks/000001.safetensors", "sha256", "repair:", f"--out {s}")
    assert snapshot(s) == before
    # the repair it names: delete the chunk, rerun the command; the store is the reference again
    (s / "chunks" / "000001.safetensors").unlink()
    rc, _, err = run_cli(line.split("run resi-dual ", 1)[1].split(" again")[0].split(" "), capsys)
    assert rc == 0, err
    assert snapshot(s)["chunks/000001.safetensors"] == snapshot(reference)["chunks/000001.safetensors"]
    assert run_cli(["verify", s], capsys)[0] == 0


@pytest.mark.parametrize("command", ["analyze", "train", "zeroshot"])
def test_flipped_bytes_are_found_on_the_first_read(world, reference, tmp_path, capsys, monkeypatch, command):
    """A chunk whose data changed is named with the repair when a command reads it, before any result;
    RESI_DUAL_CHECK_READS=0 skips the check (and then the flipped byte goes unnoticed)."""
    s = _copy(reference, tmp_path)
    _flip(s / "chunks" / "000001.safetensors", at=-200)
    out = tmp_path / "out"
    argv = {"analyze": ["analyze", s, "--out", out, "--twonn-samples", "0", "--no-progress"],
            "train": ["train", "--train", world["train"], "--val", world["val"], "--test", s, "--adapter", "linear",
                      "--out", out, "--quiet", "--epochs", "1"],
            "zeroshot": ["zeroshot", s, "--train", world["train"], "--out", out]}[command]
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "chunks/000001.safetensors", "sha256", f"resi-dual verify {s}", "repair:")
    assert not out.exists() or snapshot(out) == {}
    monkeypatch.setenv("RESI_DUAL_CHECK_READS", "0")
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err


def test_each_chunk_is_hashed_once_per_process(reference, monkeypatch):
    import resi_dual.store.disk as disk

    hashed = []
    real = disk.file_sha256
    monkeypatch.setattr(disk, "_CHECKED", set())
    monkeypatch.setattr(disk, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    store = disk.open_store(reference)
    assert hashed == []  # opening reads headers only
    store.features("L0H0", rows=slice(0, 2))
    assert hashed == ["000000.safetensors"]  # the first read of a chunk hashes that chunk alone
    first = store.features("L1H1")
    store.features("L1H1")
    disk.open_store(reference).features("L1H1")  # reopened in the same process: not hashed again
    assert sorted(hashed) == sorted(p.name for p in (reference / "chunks").iterdir())
    assert first.shape[0] == len(store)


def test_truncated_chunk_is_one_line_on_open(reference, tmp_path, capsys):
    s = _copy(reference, tmp_path)
    chunk = s / "chunks" / "000000.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    rc, _, err = run_cli(["analyze", s, "--twonn-samples", "0"], capsys)
    assert_one_line_error(rc, err, "chunks/000000.safetensors", "truncated", "repair:")
    assert not (s / "analysis").exists()


def test_resume_does_not_certify_a_bad_chunk(world, reference, tmp_path, capsys):
    """Truncate a chunk, delete the manifest, rerun encode: the chunk is re-encoded, not certified."""
    s = _copy(reference, tmp_path)
    chunk = s / "chunks" / "000000.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    _flip(s / "chunks" / "000001.safetensors")  # same size, bad data: its header's data hash catches it
    (s / "manifest.json").unlink()
    rc, _, err = run_cli(_encode_argv(world, s), capsys)
    assert rc == 0, err
    assert "000000.safetensors is" in err and "000001.safetensors has data" in err
    want, got = snapshot(reference), snapshot(s)
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {k: v for k, v in want.items() if k != "manifest.json"}
    assert run_cli(["verify", s], capsys)[0] == 0


def test_rerun_on_a_complete_store_with_a_missing_chunk_finishes_it(world, reference, tmp_path, capsys):
    s = _copy(reference, tmp_path)
    (s / "chunks" / "000002.safetensors").unlink()
    rc, _, err = run_cli(_encode_argv(world, s), capsys)
    assert rc == 0 and "finishing it again" in err
    assert snapshot(s)["chunks/000002.safetensors"] == snapshot(reference)["chunks/000002.safetensors"]


@pytest.mark.parametrize("edit, needle", [
    ({"model_spec": "hf:someone/else"}, "model_spec"),
    ({"split": "train"}, "split"),
    ({"n_samples": 3}, "do not add up"),
])
def test_an_edited_manifest_is_detected(reference, tmp_path, capsys, edit, needle):
    s = _copy(reference, tmp_path)
    m = json.loads((s / "manifest.json").read_text())
    m.update(edit)
    (s / "manifest.json").write_text(json.dumps(m))
    before = snapshot(s)
    for argv in (["verify", s], ["zeroshot", s, "--train", s]):
        rc, _, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, "manifest.json", needle, "repair: delete manifest.json")
    assert snapshot(s) == before


def test_missing_composition_or_manifest_keys(reference, tmp_path, capsys):
    s = _copy(reference, tmp_path)
    (s / "composition.json").unlink()
    rc, _, err = run_cli(["analyze", s], capsys)
    assert_one_line_error(rc, err, "composition.json", "missing")
    s2 = _copy(reference, tmp_path / "b")
    m = json.loads((s2 / "manifest.json").read_text())
    del m["chunks"], m["class_names"]
    (s2 / "manifest.json").write_text(json.dumps(m))
    rc, _, err = run_cli(["analyze", s2], capsys)
    assert_one_line_error(rc, err, "manifest.json lacks", "class_names", "chunks")


def test_a_live_writer_holds_the_lock(world, reference, tmp_path, capsys):
    s = _copy(reference, tmp_path)
    (s / "chunks" / "000002.safetensors").unlink()
    (s / "manifest.json").unlink()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live_tmp = s / "chunks" / f".000002.safetensors.tmp-{sleeper.pid}.safetensors"
        live_tmp.write_bytes(b"being written")
        (s / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        rc, _, err = run_cli(_encode_argv(world, s), capsys)
        assert_one_line_error(rc, err, f"pid {sleeper.pid}")
        assert live_tmp.exists() and not (s / "manifest.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the writer is dead now: its lock and temporaries are taken over and removed
    rc, _, err = run_cli(_encode_argv(world, s), capsys)
    assert rc == 0, err
    assert not live_tmp.exists() and not (s / ".lock").exists()
    assert snapshot(s)["chunks/000002.safetensors"] == snapshot(reference)["chunks/000002.safetensors"]


def test_two_concurrent_encodes_on_one_out(world, tmp_path, reference):
    """Both run at once: one writes the store, the other is refused (or finds it complete); never a crash."""
    out = tmp_path / "s"
    procs = [subprocess.Popen([sys.executable, "-m", "resi_dual", *map(str, _encode_argv(world, out))],
                              env=dict(os.environ, PYTHONPATH=str(__import__("fault_helpers").SRC), PYTHONWARNINGS="ignore",
                                       OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert "Traceback" not in err, err
        if rc != 0:
            assert_one_line_error(rc, err, "another encode")
    assert any(rc == 0 for rc, _ in results)
    if not all(rc == 0 for rc, _ in results):  # the refused one: run it again now
        assert run_sub(_encode_argv(world, out)).returncode == 0
    got, want = snapshot(out), snapshot(reference)
    assert {k for k in got if k != "manifest.json"} == {k for k in want if k != "manifest.json"}
    assert all(got[k] == want[k] for k in got if k.startswith("chunks/"))
