"""Session fixture: tiny random-weight checkpoints of every traced family (see tracing_models)."""

from __future__ import annotations

import pytest

from tracing_models import (HF_KINDS, OPEN_CLIP_VARIANTS, POOLED_KINDS, TIMM_VARIANTS, build_hf, open_clip_cfg,
                            save_open_clip_dir, timm_clip_cfg)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """{kind: (spec, library model, own-embedding fn)} for every family, saved once per session."""
    import torch

    out = {}
    root = tmp_path_factory.mktemp("ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for i, kind in enumerate(HF_KINDS + POOLED_KINDS):
        m, own = build_hf(kind, seed=i)
        m.save_pretrained(root / kind)
        out[kind] = (f"hf:{root / kind}", m, own)
    for i, (name, (extra, quick)) in enumerate(OPEN_CLIP_VARIANTS.items()):
        m = save_open_clip_dir(root / f"oc_{name}", open_clip_cfg(extra, quick), seed=100 + i)
        out[f"open_clip_{name}"] = (f"open_clip:{root / f'oc_{name}'}", m, m.encode_image)
    for i, name in enumerate(TIMM_VARIANTS):
        m = save_open_clip_dir(root / f"timm_{name}", timm_clip_cfg(name), seed=200 + i)
        out[f"timm_{name}"] = (f"open_clip:{root / f'timm_{name}'}", m, m.encode_image)
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread):
    """One torch thread for every module here (tests/conftest.py)."""
    yield
