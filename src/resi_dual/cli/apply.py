"""`resi-dual apply`: classify new images with a base model plus a trained adapter.

The adapter file is self-contained (components, means, frozen classifier); the model is only used
to trace the images. An adapter trained on another model (layout, weights hash or readout) is refused.
"""

from __future__ import annotations

import argparse

from resi_dual.cli import add_device_argument

HELP = "classify images with a base model plus a trained adapter file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model spec the adapter was trained on (hf:…, open_clip:…, demo …)")
    p.add_argument("--adapter", required=True, help="adapter .safetensors written by `resi-dual train`")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--basis", default=None, help="optional bases .safetensors: refuse the adapter unless it was trained against it")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--top", type=int, default=1, help="classes listed per image (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of TSV")
    add_device_argument(p, extra="; the adapter itself is applied on the CPU")


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch
    from resi_dual import load_model
    from resi_dual.adapters.adapter import Adapter
    from resi_dual.core.images import open_image
    from resi_dual.errors import ResiDualError
    from resi_dual.models.loading import resolve_device
    from resi_dual.store.base import MemorySource

    if args.batch < 1 or args.top < 1:
        raise ResiDualError("--batch and --top must be at least 1")
    device = resolve_device(args.device)
    basis_hash = None
    if args.basis:
        from resi_dual.spectral.bases import UnitBases

        basis_hash = UnitBases.load(args.basis).content_hash()
    adapter = Adapter.load(args.adapter, basis_hash=basis_hash)
    if adapter.config["variant"] == "finetune":
        raise ResiDualError("a finetune run has no adapter file to apply")
    model = load_model(args.model, convention=adapter.composition.convention, device=device)
    mine, theirs = adapter.provenance.get("weights_hash"), model.weights_hash()
    if mine and theirs != mine:
        raise ResiDualError(f"adapter {args.adapter} was trained on other weights "
                            f"({adapter.provenance.get('model_spec')}, {mine[:12]}) than {args.model} ({theirs[:12]})")
    top = min(args.top, len(adapter.class_names))
    for start in range(0, len(args.images), args.batch):
        paths = args.images[start : start + args.batch]
        images = [open_image(path) for path in paths]  # the datasets' decoding: what the adapter learned on
        enc = model.trace(model.preprocess(images), check=True)
        source = MemorySource(enc, np.zeros(len(images), dtype=np.int64), adapter.class_names,
                              sample_ids=paths, meta={"weights_hash": theirs})
        probs = torch.softmax(adapter.predict_logits(adapter.encode(source)), dim=1)
        p, idx = probs.topk(top, dim=1)
        for path, pi, ii in zip(paths, p.tolist(), idx.tolist()):
            if args.json:
                print(json.dumps({"image": path, "classes": [adapter.class_names[i] for i in ii], "probabilities": pi}))
            else:
                print("\t".join([path] + [f"{adapter.class_names[i]}\t{q:.4f}" for i, q in zip(ii, pi)]))
    return 0
