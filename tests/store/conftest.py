"""Store fixtures: the tiny random CLIP vision checkpoint of tests/conftest.py, loaded once; store bytes."""

import warnings

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory, save_tiny_clip) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from resi_dual import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(tiny_spec)


def _store_bytes(path):
    """Every file of a store except the manifest, by relative path."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _stable_manifest(path):
    """The manifest without its run-dependent parts (timing, run)."""
    import json

    m = json.loads((path / "manifest.json").read_text())
    m.pop("timing"), m.pop("run")
    return m


@pytest.fixture(scope="session")
def store_bytes():
    return _store_bytes


@pytest.fixture(scope="session")
def stable_manifest():
    return _stable_manifest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread here and in the encode subprocesses: on a shared 2-core machine OpenMP threads
    waiting for busy cores made a tiny forward 10× slower; results are compared within one setting."""
    import os

    old, old_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(old)
    if old_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old_env
