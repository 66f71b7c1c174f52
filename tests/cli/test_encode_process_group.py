"""`resi-dual encode` under torchrun joins the gloo group only once the model is loaded.

transformers imports ``torch.distributed.nn`` while loading a model; its functions bind ``group.WORLD``
as a default argument at import. Imported while the group existed, they kept it alive after
``destroy_process_group``: gloo's worker threads ran on into interpreter shutdown and rank 0 sometimes
aborted after writing a complete store ("terminate called without an active exception", SIGABRT; the
two-process test in tests/store/test_processes.py failed about 1 run in 10).
"""

import argparse

import pytest

from resi_dual.cli import encode


def test_the_model_is_loaded_before_the_process_group_is_joined(monkeypatch):
    events = []

    class Stop(Exception):
        pass

    def stop(*a, **k):
        events.append("encode")
        raise Stop

    monkeypatch.setattr("resi_dual.data.load_dataset", lambda *a, **k: events.append("dataset"))
    monkeypatch.setattr("resi_dual.models.loading.load_model", lambda *a, **k: events.append("model"))
    monkeypatch.setattr(encode, "_init_distributed", lambda: events.append("group"))
    monkeypatch.setattr("resi_dual.store.writer.encode_store", stop)
    p = argparse.ArgumentParser()
    encode.add_arguments(p)
    with pytest.raises(Stop):
        encode.run(p.parse_args(["--model", "m", "--dataset", "d", "--out", "o", "--no-progress"]))
    assert events.index("group") > events.index("model")
    assert events[-1] == "encode"


def test_torch_distributed_nn_is_imported_before_the_group_exists(monkeypatch):
    """Whichever library imports it later, its default arguments then hold no group."""
    import sys

    import torch.distributed as dist

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    if hasattr(dist, "nn"):
        monkeypatch.setattr(dist, "nn", dist.nn)  # put back after the fresh import below rebinds it
    monkeypatch.delitem(sys.modules, "torch.distributed.nn", raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: seen.update(nn="torch.distributed.nn" in sys.modules))
    assert encode._init_distributed() is dist
    assert seen == {"nn": True}
