"""Fault corpus, SIGKILL then rerun: train, zeroshot, analyze and interpret as real processes killed with
SIGKILL at chosen output renames (a torn temporary, a whole temporary not yet renamed, just after a
rename) and at a random moment. Whatever is under a final name afterwards is whole (equal to an
uninterrupted run's file), the completion marker is absent, and a rerun equals the uninterrupted run
and leaves no temporaries behind."""

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fault_helpers import popen_cli, run_cli, run_killed

pytestmark = pytest.mark.integration  # the CLI / real stores end to end

#: the file written last by each command (its presence marks a complete run), if it has one
MARKER = {"train": "data-residual-summary.json", "zeroshot": "zeroshot.json", "analyze": "complete.json", "interpret": "complete.json"}


def _argv(command, world, text_store, out="o"):
    return {
        "train": ["train", "--train", world["train"], "--val", world["val"], "--test", world["test"], "--adapter",
                  "residual", "--out", out, "--quiet", "--epochs", "3", "--seeds", "1,2"],
        "zeroshot": ["zeroshot", world["test"], "--train", world["train"], "--out", out],
        "analyze": ["analyze", world["test"], "--out", out, "--twonn-samples", "0", "--no-progress"],
        "interpret": ["interpret", text_store, "--dictionary", text_store.parent / "dictionary.txt", "-k", "2",
                      "--pcs", "2", "--out", out, "--no-progress"],
    }[command]


def _drop_timings(obj):
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def _content(path: Path):
    """What must equal an uninterrupted run's: bytes, but JSON without timings and safetensors as
    tensors + metadata (the safetensors library writes its metadata in hash order)."""
    if path.suffix == ".json":
        return _drop_timings(json.loads(path.read_text()))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return f.metadata(), {k: np.asarray(f.get_tensor(k)).tobytes() for k in f.keys()}
    return path.read_bytes()


def _outputs(root: Path) -> dict:
    from resi_dual.files import is_tmp

    return {p.relative_to(root).as_posix(): _content(p) for p in sorted(root.rglob("*")) if p.is_file() and not is_tmp(p)}


def _temporaries(root: Path) -> list[str]:
    from resi_dual.files import is_tmp

    return sorted(p.name for p in root.rglob(".*") if is_tmp(p))


def _assert_whole(out: Path, want: dict, marker: str | None, context: str) -> None:
    got = _outputs(out) if out.exists() else {}
    assert set(got) <= set(want), (context, sorted(set(got) - set(want)))
    for name in got:
        assert got[name] == want[name], (context, name)  # under its final name a file is whole, never torn
    assert marker is None or marker not in got, (context, "completion marker of an unfinished run")


def _reference(argv, cwd: Path, capsys, monkeypatch) -> tuple[dict, list[str]]:
    """An uninterrupted run in this process: its outputs, and the names it renamed into place, in order."""
    import os

    renames, real = [], os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().parent == (cwd / "o").resolve():  # not a library's or the runtime's cache
            renames.append(Path(dst).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(os, "replace", replace)
    rc, _, err = run_cli(argv, capsys)
    monkeypatch.undo()
    assert rc == 0, err
    return _outputs(cwd / "o"), renames


@pytest.mark.parametrize("command", ["train", "zeroshot", "analyze", "interpret"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(world, text_store, tmp_path, capsys, monkeypatch, command):
    ref_cwd, cwd = tmp_path / "ref", tmp_path / "run"
    ref_cwd.mkdir()
    cwd.mkdir()
    argv = _argv(command, world, text_store)
    want, renames = _reference(argv, ref_cwd, capsys, monkeypatch)
    assert len(renames) >= 2 and set(renames) <= {Path(k).name for k in want}, renames
    if MARKER[command]:
        assert renames[-1] == MARKER[command], renames

    n, duration = len(renames), 0.0
    for at, mode in sorted({(1, "torn"), ((n + 1) // 2, "after"), (n, "before")}):  # each on what the last left
        context = f"{command} killed at rename {at}/{n} ({renames[at - 1]}, {mode})"
        t0 = time.monotonic()
        r = run_killed(argv, cwd / "o", tmp_path / "kill.log", at, mode, cwd=cwd)
        duration = max(duration, time.monotonic() - t0)
        assert r.returncode == -signal.SIGKILL, (context, r.returncode, r.stderr[-2000:])
        _assert_whole(cwd / "o", want, MARKER[command], context)
        if mode != "after":
            assert _temporaries(cwd / "o"), context  # the torn or unrenamed temporary is there, under its own name

    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.5 * duration, duration)  # most of a run is start-up: aim past it
    proc = popen_cli(argv, cwd=cwd)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait(60)
    context = f"{command} killed after {delay:.2f} s (seed {seed})"
    assert rc in (0, -signal.SIGKILL), (context, proc.stderr.read()[-2000:])
    if MARKER[command] and (cwd / "o" / MARKER[command]).exists():  # it finished (killed while exiting, at most)
        assert _outputs(cwd / "o") == want, context
    else:
        _assert_whole(cwd / "o", want, MARKER[command], context)

    monkeypatch.chdir(cwd)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert _outputs(cwd / "o") == want
    assert _temporaries(cwd / "o") == []  # the dead writers' temporaries are cleared by the rerun


#: a change of each command's arguments that changes its outputs
_EDIT = {"train": ["--epochs", "1"], "zeroshot": None, "analyze": ["--threshold", "0.9"], "interpret": ["-k", "1"]}


@pytest.mark.parametrize("command", ["train", "zeroshot", "analyze", "interpret"])
def test_a_killed_rerun_with_other_arguments_unmarks_the_folder(world, text_store, tmp_path, capsys, monkeypatch, command):
    """Over a complete folder, a rerun with other arguments is killed after its first file: the folder
    is no longer marked complete (it mixes files of two runs)."""
    monkeypatch.chdir(tmp_path)
    argv = _argv(command, world, text_store)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0 and (tmp_path / "o" / MARKER[command]).exists(), err
    edited = argv[:1] + [world["val"]] + argv[2:] if command == "zeroshot" else argv + _EDIT[command]
    r = run_killed(edited, tmp_path / "o", tmp_path / "kill.log", 1, "after", cwd=tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (tmp_path / "o" / MARKER[command]).exists()


def test_a_killed_locate_leaves_the_previous_folder_and_is_cleared_by_the_rerun(world, tmp_path, capsys, monkeypatch):
    """locate builds a hidden sibling and swaps it in: killed before the swap, the previous folder stands
    whole; the rerun removes the dead run's hidden folder."""
    monkeypatch.chdir(tmp_path)
    argv = ["locate", "--model", "demo", "--text", "a red square", world["data"] / "test" / "red" / "0.png", "--out", "loc"]
    rc, _, err = run_cli(argv + ["--units", "L0H0"], capsys)
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in (tmp_path / "loc").iterdir()}
    r = run_killed(argv, tmp_path, tmp_path / "kill.log", 1, "before", cwd=tmp_path)  # the first rename: a file in the stage
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "loc").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".loc.tmp-")]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "loc").iterdir()} != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kill.log", "loc"]
