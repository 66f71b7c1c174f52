"""Helpers of the fault corpus: tiny data and checkpoints, running a command in-process or as a
subprocess, and the assertion every case makes (one ``error:`` line, no traceback)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SRC = str(Path(__file__).resolve().parents[2] / "src")
CLASSES = ("red", "green", "blue")


def make_folder(root: Path, per_split: dict, seed: int = 0, size: int = 16) -> Path:
    """``root/<split>/<class>/<i>.png``: noisy images whose dominant channel is the class."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3))
                base[..., c] = 160
                img = np.clip(base + rng.normal(0, 50, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def save_vit(path: Path, seed: int = 0) -> str:
    import transformers as tf

    torch.manual_seed(seed)
    m = tf.ViTModel(tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=16, patch_size=8))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    m.save_pretrained(path)
    return f"hf:{path}"


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``resi-dual argv`` run in this process."""
    from resi_dual.cli import main

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def sub_env(**extra) -> dict:
    """The environment of a subprocess run: this source tree, warnings off, one thread, offline."""
    return dict(os.environ, PYTHONPATH=SRC, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", **extra)


def run_sub(argv, *, ulimit_f: int | None = None, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``resi-dual argv`` as a subprocess (warnings off, one thread); ``ulimit_f`` caps file size in KiB blocks."""
    env = sub_env()
    cmd = [sys.executable, "-m", "resi_dual", *map(str, argv)]
    if ulimit_f is not None:
        import shlex

        cmd = ["bash", "-c", f"ulimit -f {ulimit_f} && exec " + " ".join(shlex.quote(c) for c in cmd)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_one_line_error(rc: int, err: str, *needles: str, code: int = 2) -> str:
    """The command failed with ``code`` and exactly one stderr line ``error: …`` holding each needle."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(path: Path) -> dict:
    """Every file under ``path`` with its bytes (what must be unchanged after a refused command)."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


#: run as ``python -c``: the CLI with ``os.replace`` watched — every rename's destination is logged, and
#: the process SIGKILLs itself at the chosen one under ``KILL_UNDER``: ``torn`` (temporary cut to half, not renamed), ``before``
#: (temporary whole, not renamed) or ``after`` (renamed), so a kill lands exactly where writes can tear
_KILL_BOOT = r"""
import os, signal, sys
log, at, mode = os.environ["KILL_LOG"], int(os.environ["KILL_AT"]), os.environ["KILL_MODE"]
under = os.path.realpath(os.environ["KILL_UNDER"]) + os.sep
real, n = os.replace, [0]
def replace(src, dst, *a, **kw):
    if not os.path.realpath(dst).startswith(under):  # a library's cache, not an output
        return real(src, dst, *a, **kw)
    n[0] += 1
    with open(log, "a") as f:
        f.write(os.fspath(dst) + "\n")
    if n[0] == at and mode == "torn" and os.path.isfile(src):
        os.truncate(src, os.path.getsize(src) // 2)
    if n[0] == at and mode in ("torn", "before"):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *a, **kw)
    if n[0] == at and mode == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from resi_dual.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def run_killed(argv, under: Path, log: Path, at: int = 0, mode: str = "after", cwd=None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``resi-dual argv`` as a subprocess that SIGKILLs itself at its ``at``-th ``os.replace`` onto a path
    under ``under`` (1-based; 0: never), appending each such rename's destination to ``log``."""
    env = sub_env(KILL_LOG=str(log), KILL_AT=str(at), KILL_MODE=mode, KILL_UNDER=str(under))
    return subprocess.run([sys.executable, "-c", _KILL_BOOT, *map(str, argv)], env=env, capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def popen_cli(argv, cwd=None) -> subprocess.Popen:
    """``resi-dual argv`` started as a subprocess (to be killed from outside)."""
    return subprocess.Popen([sys.executable, "-m", "resi_dual", *map(str, argv)], env=sub_env(), cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
