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


def run_sub(argv, *, ulimit_f: int | None = None, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``resi-dual argv`` as a subprocess (warnings off, one thread); ``ulimit_f`` caps file size in KiB blocks."""
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
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
