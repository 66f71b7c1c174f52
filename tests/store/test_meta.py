"""StoreMeta and Plan: typed records that round-trip through the store's flat JSON files."""

import json

import pytest

from resi_dual.data import load_dataset
from resi_dual.errors import ResiDualError
from resi_dual.store import MemorySource, Plan, StoreMeta, open_store
from resi_dual.store.disk import MANIFEST, PLAN
from resi_dual.store.writer import EncodeConfig, encode_store


def test_manifest_round_trip_and_plan_on_disk(tiny_model, tmp_path):
    ds = load_dataset("digits", "val")
    meta = encode_store(tiny_model, ds, tmp_path / "s", EncodeConfig(limit=20, batch_size=8, chunk_rows=8, progress=False))
    on_disk = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert meta.to_dict() == on_disk and StoreMeta.from_dict(on_disk) == meta
    assert Plan.from_dict(json.loads((tmp_path / "s" / PLAN).read_text())) == meta.plan
    assert (meta.model_spec, meta.dataset_name, meta.split, meta.n_samples) == (tiny_model.spec, "digits", "val", 20)
    assert meta.plan.class_names == tuple(ds.class_names) and [c.rows for c in meta.chunks] == [8, 8, 4]
    assert meta.identity() == {"model_spec": tiny_model.spec, "weights_hash": tiny_model.weights_hash(),
                               "dataset_spec": "digits", "dataset_name": "digits", "split": "val"}


def test_old_and_newer_manifests_read(tiny_model, tmp_path):
    """A manifest written before the records existed reads unchanged; unknown keys survive a round trip."""
    ds = load_dataset("digits", "val")
    encode_store(tiny_model, ds, tmp_path / "s", EncodeConfig(limit=8, batch_size=8, chunk_rows=8, progress=False))
    path = tmp_path / "s" / MANIFEST
    doc = json.loads(path.read_text())
    doc["verified"] = {"by": "a newer resi-dual"}
    path.write_text(json.dumps(doc))
    store = open_store(tmp_path / "s", verify=True)
    assert store.meta.extra == {"verified": {"by": "a newer resi-dual"}} and store.meta.to_dict() == doc
    del doc["n_planned"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ResiDualError, match="n_planned"):
        open_store(tmp_path / "s")


def test_memory_source_meta_is_partial(make_toy_source):
    src = make_toy_source(n=10)
    assert src.meta == StoreMeta(dataset_name="toy") and src.meta.plan is None and src.meta.identity() == {"dataset_name": "toy"}
    assert StoreMeta.from_dict(src.meta.to_dict()) == src.meta and src.meta.data_root is None
    m = MemorySource(src._enc, src.labels, meta=StoreMeta(model_spec="demo"))
    assert m.meta.model_spec == "demo" and m.meta.weights_hash is None
