"""The ground-truth check of a model against a random-weight control tower of the same shape (docs/DESIGN.md §13).

Both towers encode the same held-out world images; for each, :func:`resi_dual.interpret.groundtruth.check`
measures what every head and its first PCs carry and whether their text descriptions name it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from resi_dual.errors import ResiDualError


def demo_folder(spec: str) -> Path:
    """The checkpoint folder of a ``demo`` or ``demo:<folder>`` spec."""
    from resi_dual.models.demo import DEMO_DIR

    if spec == "demo":
        return DEMO_DIR
    if spec.startswith("demo:"):
        return Path(spec[5:])
    raise ResiDualError(f"the random-weight control is built for demo models only, not {spec!r}; pass --no-control")


def random_twin(folder: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write a demo checkpoint with the shape of ``folder``'s and seeded random weights (transformers' init)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json", "demo.json"):
        shutil.copyfile(folder / name, out / name)
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder))
    model.save_pretrained(out)
    info = json.loads((out / "demo.json").read_text())
    info["random_weights_seed"] = seed
    (out / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def run_check(spec: str, n: int, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Load ``spec``, trace ``n`` held-out world images and run the check; returns head rows, PC rows, summary."""
    from resi_dual import load_model
    from resi_dual.interpret.groundtruth import check, trace_world, world_attributes
    from resi_dual.models.text import get_text_tower
    from resi_dual.spectral.pca import fit_bases

    model = load_model(spec)
    source = trace_world(model, n=n, seed=seed)
    bases = fit_bases(source, units="heads", progress=False)
    return check(source, world_attributes(source), bases, get_text_tower(model), seed=seed)


def ground_truth(spec: str = "demo", n: int = 1000, seed: int = 0, control: bool = True,
                 workdir: str | Path | None = None) -> dict[str, tuple[list[dict], list[dict], dict]]:
    """``{"trained": (heads, pcs, summary), "control": (…)}``: the check on ``spec`` and on its random twin."""
    import tempfile

    out = {"trained": run_check(spec, n, seed)}
    if control:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            twin = random_twin(demo_folder(spec), Path(tmp) / "control", seed=seed)
            out["control"] = run_check(f"demo:{twin}", n, seed)
    return out
