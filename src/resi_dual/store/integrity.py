"""Store integrity: cheap checks on every open and resume, the full check of `resi-dual verify`,
and the write lock that keeps two encodes from sharing one folder.

Cheap (a stat and a header read per chunk): each chunk's header parses, holds the seven arrays with
the shapes the composition and dtype imply, and the file is exactly as long as its header says; the
manifest's copy of the plan agrees with ``plan.json`` and its row counts add up. Full (reads every
byte): each chunk's sha256 equals the manifest's, and its data section equals the ``data_sha256``
written into its own header when it was encoded (so a resume can check chunks an earlier or another
process wrote, before any manifest exists). Every problem names the file and the repair.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from resi_dual.errors import ResiDualError
from resi_dual.files import pid_alive

#: manifest keys every reader relies on
REQUIRED_KEYS = ("format", "model_spec", "weights_hash", "dataset_spec", "dataset_name", "split", "class_names",
                 "dtype", "n_planned", "n_chunks", "n_samples", "chunks", "skipped")
#: plan fields that the manifest repeats: an edit of either is a mismatch
PLAN_KEYS = ("model_spec", "weights_hash", "dataset_spec", "dataset_name", "split", "class_names", "limit",
             "n_planned", "samples_sha256", "dtype", "chunk_rows", "batch_size", "n_chunks", "family", "convention")
#: the header key of a chunk's own data hash
DATA_HASH = "data_sha256"
LOCK = ".lock"


def expected_shapes(comp, rows: int) -> dict[str, tuple]:
    """The array shapes of a chunk of ``rows`` rows of a model with composition ``comp``."""
    return {"dense": (rows, comp.dense_slots, comp.width("mlp")), "heads": (rows, comp.n_layers, comp.n_heads, comp.width("head")),
            "mu": (rows,), "sigma": (rows,), "output": (rows, comp.d_out), "labels": (rows,), "dataset_index": (rows,)}


def chunk_problem(path: Path, comp, dtype_code: str) -> str | None:
    """What is wrong with chunk ``path`` from its header and size alone, or None (cheap)."""
    from resi_dual.store.disk import ShardReader

    path = Path(path)
    if not path.is_file():
        return "is missing"
    try:
        shard = ShardReader(path)
    except ResiDualError:
        return "has an unreadable header (truncated or not a chunk)"
    if "labels" not in shard.header:
        return "has no labels array"
    rows = int(shard.header["labels"]["shape"][0])
    end = 0
    for name, shape in expected_shapes(comp, rows).items():
        h = shard.header.get(name)
        if h is None:
            return f"has no {name} array"
        if tuple(h["shape"]) != shape:
            return f"holds {name} of shape {tuple(h['shape'])}, expected {shape}"
        if name in ("dense", "heads") and h["dtype"] != dtype_code:
            return f"holds {name} as {h['dtype']}, the store's dtype is {dtype_code}"
        end = max(end, int(h["data_offsets"][1]))
    size, want = path.stat().st_size, shard.data_start + end
    if size != want:
        return f"is {size} bytes, its header says {want} ({'truncated' if size < want else 'trailing bytes'})"
    return None


def chunk_hashes(path: Path) -> tuple[str, str | None, str | None]:
    """(sha256 of the file, sha256 of its data section, the data hash recorded in its header or None)."""
    from resi_dual.store.disk import ShardReader

    shard = ShardReader(path)
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        whole.update(f.read(shard.data_start))
        for block in iter(lambda: f.read(1 << 20), b""):
            whole.update(block)
            data.update(block)
    return whole.hexdigest(), data.hexdigest(), shard.metadata.get(DATA_HASH)


def data_problem(path: Path) -> str | None:
    """Reads the chunk: its data section against the hash in its own header (None if it has none)."""
    _, data, recorded = chunk_hashes(path)
    if recorded is not None and data != recorded:
        return "has data that does not match the hash in its header (corrupted)"
    return None


def repair_hint(meta: dict | None, root: Path | None = None) -> str:
    """How to repair a store: rerun its encode command, which checks every chunk and re-encodes bad ones."""
    argv = list(((meta or {}).get("run") or {}).get("argv") or [])
    if argv and root is not None:  # the store may have been moved since: point --out at it
        argv = [f"--out={root}" if a.startswith("--out=") else a for a in argv]
        argv = [str(root) if i and argv[i - 1] == "--out" else a for i, a in enumerate(argv)]
    cmd = "resi-dual " + " ".join(argv) if argv and argv[0] == "encode" else "the same `resi-dual encode` command"
    return f"repair: delete that file and run {cmd} again (it re-encodes only what is missing)"


def manifest_problems(root: Path, meta: dict) -> list[str]:
    """Cheap consistency of a manifest: required keys, agreement with plan.json, row counts."""
    from resi_dual.store.disk import PLAN

    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return [f"manifest.json lacks {', '.join(missing)}"]
    out = []
    try:
        plan = json.loads((Path(root) / PLAN).read_text())
    except (OSError, ValueError):
        plan = None
    if plan is None:
        out.append(f"{PLAN} is missing or not JSON")
    else:
        diffs = [k for k in PLAN_KEYS if plan.get(k) != meta.get(k)]
        if diffs:
            out.append(f"manifest.json disagrees with {PLAN} on {', '.join(diffs)} (edited?)")
    chunks = meta["chunks"]
    if not isinstance(chunks, list) or len(chunks) != meta["n_chunks"]:
        out.append(f"manifest.json lists {len(chunks) if isinstance(chunks, list) else '?'} chunks, its n_chunks is {meta['n_chunks']}")
    else:
        rows = sum(int(c.get("rows", -1)) for c in chunks)
        if rows != meta["n_samples"] or rows + len(meta["skipped"]) != meta["n_planned"]:
            out.append(f"manifest.json: n_samples {meta['n_samples']}, chunk rows {rows}, skipped {len(meta['skipped'])}, "
                       f"planned {meta['n_planned']} do not add up (edited?)")
    return out


def fail(root: Path, meta: dict | None, what: str, problem: str) -> ResiDualError:
    """The one-line error for a store that fails a check: the file, the problem, the repair."""
    if what == "manifest.json":
        hint = "repair: delete manifest.json and run the same `resi-dual encode` command again (it rebuilds it from the chunks)"
    else:
        hint = repair_hint(meta, root)
    return ResiDualError(f"store {root}: {what} {problem}; {hint}")


def verify_store(root: Path) -> dict:
    """The full check behind `resi-dual verify`: manifest against plan and chunks, composition and
    readout present, every chunk's header, size, data hash and sha256. Returns a summary dict."""
    from resi_dual.core.units import Composition
    from resi_dual.store.disk import COMPOSITION, READOUT, ShardReader, read_manifest

    root = Path(root)
    meta = read_manifest(root)
    problems = manifest_problems(root, meta)
    if problems:
        raise fail(root, meta, "manifest.json", problems[0].removeprefix("manifest.json "))
    try:
        comp = Composition.from_json((root / COMPOSITION).read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(root, meta, COMPOSITION, f"is missing or unreadable ({type(e).__name__})") from None
    if comp.family != meta.get("family", comp.family):
        raise fail(root, meta, COMPOSITION, f"is of family {comp.family!r}, the manifest says {meta['family']!r}")
    try:
        ShardReader(root / READOUT)
    except ResiDualError:
        raise fail(root, meta, READOUT, "is missing or unreadable") from None
    code = {"float16": "F16", "float32": "F32"}.get(meta["dtype"], "?")
    n_bytes = 0
    for entry in meta["chunks"]:
        path = root / entry["file"]
        problem = chunk_problem(path, comp, code)
        if problem is None:
            whole, data, recorded = chunk_hashes(path)
            if whole != entry.get("sha256"):
                problem = "does not match its sha256 checksum in the manifest (corrupted)"
            elif recorded is not None and data != recorded:
                problem = "has data that does not match the hash in its header (corrupted)"
            elif int(ShardReader(path).header["labels"]["shape"][0]) != entry.get("rows"):
                problem = f"holds another row count than the manifest's {entry.get('rows')}"
        if problem:
            raise fail(root, meta, entry["file"], problem)
        n_bytes += path.stat().st_size
    return {"store": str(root), "chunks": len(meta["chunks"]), "samples": meta["n_samples"], "bytes": n_bytes}


# -- the write lock -------------------------------------------------------------------------------

def take_lock(root: Path) -> Path:
    """Create ``root/.lock`` holding this writer's pid and host; a live writer's lock is refused,
    a dead one's is taken over. Returns the lock path (release with :func:`release_lock`)."""
    lock = Path(root) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                other = {}
            pid, host = int(other.get("pid", 0) or 0), other.get("host")
            if host not in (None, me["host"]):
                raise ResiDualError(f"{root} is being written by process {pid} on {host} ({lock}); "
                                    "wait for it, or delete the lock file if that process is gone") from None
            if pid and pid != me["pid"] and pid_alive(pid):
                raise ResiDualError(f"{root} is being written by another encode (pid {pid}); "
                                    "wait for it to finish or stop it, then run this command again") from None
            try:
                lock.unlink()  # a dead writer's lock
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise ResiDualError(f"could not take the write lock {lock}; another encode keeps taking it")


def release_lock(lock: Path | None) -> None:
    """Remove our lock (only if it still holds our pid)."""
    if lock is None:
        return
    try:
        if json.loads(Path(lock).read_text()).get("pid") == os.getpid():
            Path(lock).unlink()
    except (OSError, ValueError):
        pass


# -- resume ---------------------------------------------------------------------------------------

def _dtype_code(dtype: str) -> str:
    return {"float16": "F16", "float32": "F32"}.get(dtype, "?")


def check_written_chunks(root: Path, plan: dict, comp) -> list[str]:
    """Before a resume: every chunk already on disk was written by another process (an earlier run,
    another rank), so check its header, size and data hash; remove the bad ones, which are then
    encoded again. Returns one message per removed chunk."""
    from resi_dual.store.disk import chunk_path

    out = []
    for k in range(plan["n_chunks"]):
        path = chunk_path(root, k)
        if not path.exists():
            continue
        problem = chunk_problem(path, comp, _dtype_code(plan["dtype"])) or data_problem(path)
        if problem:
            path.unlink()
            out.append(f"chunk {path.name} {problem}: removed, it is encoded again")
    return out


def recheck_complete(root: Path, comp) -> str | None:
    """A rerun on a complete store: the cheap checks; on a problem the manifest (and a bad chunk) is
    removed so the run finishes the store again. Returns what was wrong, or None."""
    from resi_dual.store.disk import MANIFEST, read_manifest

    root = Path(root)
    try:
        meta = read_manifest(root)
        problems = manifest_problems(root, meta)
    except ResiDualError as e:
        problems, meta = [str(e).split("; repair", 1)[0]], None
    if not problems and meta is not None:
        for entry in meta["chunks"]:
            problem = chunk_problem(root / entry["file"], comp, _dtype_code(meta["dtype"]))
            if problem:
                if (root / entry["file"]).exists():
                    (root / entry["file"]).unlink()
                problems = [f"{entry['file']} {problem}"]
                break
    if not problems:
        return None
    (root / MANIFEST).unlink(missing_ok=True)
    return f"{root} was complete but {problems[0]}; finishing it again"
