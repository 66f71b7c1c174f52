"""Shared fixtures: a tiny random CLIP vision tower saved as a local HF checkpoint (no hub)."""

import warnings

import pytest
import torch


def _save_tiny_clip(path, seed: int = 0) -> str:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> str:
    return _save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def save_tiny_clip():
    """``save_tiny_clip(path, seed) -> spec``: another tiny checkpoint (e.g. different weights)."""
    return _save_tiny_clip


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from resi_dual import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(tiny_spec)
