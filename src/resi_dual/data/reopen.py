"""Reopen the images behind stored encodings: a store's dataset spec, split and sample ids, read back.

``data_root`` says where the dataset lives *now*: for ``torchvision:`` specs it is the dataset root
(default: the one recorded when the store was encoded); for ``folder:`` specs it replaces the folder
in the spec (a moved dataset). Every failure is one line naming what is missing and ``--data-root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from resi_dual.errors import ResiDualError


def reopen_images(meta, sample_ids: Sequence[str], class_names: Sequence[str],
                  wanted: Sequence[str] | None = None, data_root: str | Path | None = None) -> list[Image.Image]:
    """RGB images of the ``wanted`` sample ids (default: all of ``sample_ids``), in that order.

    Args:
        meta: the store's ``StoreMeta`` (its ``dataset_spec``, ``split`` and recorded ``data_root``).
        sample_ids: every sample id of the store (to name the store's size in errors).
        class_names: the store's class names (for sources that carry none).
    """
    from resi_dual.data.specs import load_dataset

    spec, split = meta.dataset_spec, meta.split
    if not spec or not split:
        raise ResiDualError("the store manifest records no dataset spec and split, so its images cannot be reopened")
    kind, _, arg = str(spec).partition(":")
    root = data_root if data_root is not None else meta.data_root
    if kind == "folder" and data_root is not None:
        spec = f"folder:{data_root}"
    try:
        ds = load_dataset(spec, split, root=root, class_names=list(class_names))
    except ResiDualError as e:
        hint = "" if "--data-root" in str(e) else "; pass --data-root DIR where the dataset now lives"
        raise ResiDualError(f"{e}{hint}") from None
    wanted = list(sample_ids if wanted is None else wanted)
    index = {ds.sample_id(i): i for i in range(len(ds))}
    missing = [sid for sid in wanted if sid not in index]
    if missing:
        base = arg if kind == "folder" and data_root is None else (data_root or root or spec)
        raise ResiDualError(f"{len(missing)} of the store's images are missing from {spec} ({split}), e.g. "
                            f"{Path(str(base)) / missing[0]}; pass --data-root DIR where the dataset now lives")
    return [ds[index[sid]][0] for sid in wanted]
