"""Machine tuning in one place: torch's thread count, the CPU's description, and the measured choice
between float32 and bfloat16 products.

Every module that runs a stretch of work at a particular thread count does it through
:func:`torch_threads`, which restores torch's setting on the way out, even on error. The number format
of the adapters' large products is decided by timing both formats on the actual shapes
(:func:`faster_products`), never by CPU flags alone: a CPU may advertise bfloat16 dot products and still
multiply bfloat16 more slowly than float32. The choice is cached per machine and shape in a small JSON
file under the user cache directory (``$RESI_DUAL_CACHE``, else ``$XDG_CACHE_HOME/resi-dual``, else
``~/.cache/resi-dual``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

#: CPU flags that decide how fast the dense products run (as /proc/cpuinfo spells them)
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


@contextmanager
def torch_threads(n: int | None):
    """``with torch_threads(n):`` run with n torch threads (None: leave the setting alone); the previous
    count is restored on exit, also when the body raises."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_thread():
    """Small dense factorisations (QR, eigh) and short ops run on one thread: threaded LAPACK and
    OpenMP fork/join cost more than they save at these sizes, most of all on busy shared cores."""
    return torch_threads(1)


@contextmanager
def single_thread_native():
    """Run scikit-learn's small fits on one thread: its OpenMP loops and the BLAS under them (limited
    through threadpoolctl, which sklearn ships with) and torch's own pool. A logistic regression on a few
    thousand rows takes many short iterations, each a fork/join of both pools when they are threaded."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), torch_threads(1):
        yield


def release_free_memory() -> None:
    """Return the heap pages freed so far to the operating system (glibc's ``malloc_trim``; a no-op
    elsewhere). A long streaming pass of many mid-sized temporaries otherwise leaves freed pages
    resident, more of them the more blocks it streams, so its resident peak would grow with the rows."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """``{"model": str, "flags": [relevant flags present], "cores": int}`` of this machine."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: fall back on what torch reports
        cpu = getattr(torch, "cpu", None)
        if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags.add("avx512_bf16")
        if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            flags.add("amx_tile")
    return {"model": model, "flags": [f for f in RELEVANT_FLAGS if f in flags], "cores": os.cpu_count() or 1}


def machine_line() -> str:
    """One line naming the CPU, its relevant flags and torch's thread count (for benchmark sections)."""
    info = cpu_info()
    flags = ", ".join(info["flags"]) or "none of " + "/".join(RELEVANT_FLAGS)
    amx = "" if "amx_tile" in info["flags"] else ", no AMX"
    return (f"{info['model']} ({info['cores']} cores; flags: {flags}{amx}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def cache_dir() -> Path:
    """The user cache directory of resi-dual (created on demand by writers)."""
    root = os.environ.get("RESI_DUAL_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "resi-dual"


def _products_timer(dtype: torch.dtype, b: int, k: int, d: int):
    """A function timing ``steps`` pairs (b × k)·(k × d) and (b × d)·(d × k) in ``dtype`` (seconds)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(k, d, generator=g).to(dtype)
    a, gy = torch.randn(b, k, generator=g).to(dtype), torch.randn(b, d, generator=g).to(dtype)
    y, ga = torch.empty(b, d, dtype=dtype), torch.empty(b, k, dtype=dtype)

    def run(steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            torch.mm(a, v, out=y)
            torch.mm(gy, v.T, out=ga)
        return time.perf_counter() - t

    return run


def products_cache_file() -> Path:
    """The JSON file caching :func:`faster_products`' choices (machine and shape -> format)."""
    return cache_dir() / "products.json"


def _machine_key() -> str:
    info = cpu_info()
    return f"{info['model']}|{'+'.join(info['flags'])}|torch {torch.__version__}"


def faster_products(b: int, k: int, d: int, steps: int = 8, rounds: int = 3, use_cache: bool = True) -> str:
    """``"float32"`` or ``"bfloat16"``: the faster format for the adapters' two products at shape
    (b × k)·(k × d), timed at one thread (the count the step mostly runs them at), both formats
    interleaved, best of ``rounds``. bfloat16 rounds its inputs, so it must be clearly faster (by 15 %)
    to be picked. The choice is cached per machine (CPU model, flags, torch version) and shape."""
    key = f"{_machine_key()}|{b}x{k}x{d}"
    path = products_cache_file()
    if use_cache:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        if isinstance(cached, dict) and cached.get(key) in ("float32", "bfloat16"):
            return cached[key]
    with torch_threads(1):
        t32, t16 = _products_timer(torch.float32, b, k, d), _products_timer(torch.bfloat16, b, k, d)
        t32(1), t16(1)  # first calls pay for kernel set-up
        s32 = s16 = float("inf")
        for _ in range(rounds):
            s32, s16 = min(s32, t32(steps)), min(s16, t16(steps))
    choice = "bfloat16" if s16 * 1.15 < s32 else "float32"
    if use_cache:
        _write_json_entry(path, key, choice)
    return choice


def _write_json_entry(path: Path, key: str, value: str) -> None:
    """Add one entry to a small JSON dict file (temp name + rename; a cache that cannot be written is skipped)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
