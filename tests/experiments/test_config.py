"""Grid TOML: the shipped configs load; bad input gives one-line errors naming the key."""

from pathlib import Path

import pytest

from resi_dual.errors import ResiDualError
from resi_dual.experiments.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def base(**over):
    d = {
        "models": [{"name": "a", "spec": "demo"}],
        "datasets": [{"name": "digits", "spec": "digits"}],
        "reference": {"spec": "fashion-mnist"},
    }
    d.update(over)
    return d


def test_defaults_and_types():
    cfg = parse_config(base(limits={"train": 100, "test": "all"}, grid={"seeds": [0, 1, 2]}))
    assert cfg.models[0].spec == "demo" and cfg.reference.name == "fashion-mnist"
    assert cfg.limits.train == 100 and cfg.limits.test is None and cfg.limits.val is None
    assert cfg.seeds == (0, 1, 2) and cfg.reference_split == "train"
    assert cfg.intrinsic_dim.variance == 0.99 and cfg.similarity.variance == 0.9
    assert "finetune" in cfg.adaptation.methods
    assert cfg.adaptation.products == "auto" and cfg.adaptation.tower_datasets is None
    assert parse_config(base(adaptation={"tower-datasets": ["digits"]})).adaptation.tower_datasets == ("digits",)
    assert parse_config(base(adaptation={"products": "float32"})).adaptation.products == "float32"
    assert cfg.device == "cpu"
    # the string is validated; whether the machine has the device is checked when the grid runs
    assert parse_config(base(grid={"device": "cuda:1"})).device == "cuda:1"


@pytest.mark.parametrize("doc, message", [
    (base(limits={"trian": 3}), "limits.trian: unknown key"),
    (base(limits={"train": -3}), "limits.train: must be positive"),
    (base(limits={"train": 2.5}), "limits.train: expected an integer"),
    (base(grid={"seeds": []}), "grid.seeds"),
    (base(grid={"convention": "odd"}), "grid.convention"),
    (base(grid={"device": "gpu"}), "grid.device: 'gpu' is not a device; use cpu, cuda, cuda:N or mps"),
    (base(grid={"device": "cuda:x"}), "grid.device: 'cuda:x' is not a device"),
    (base(grid={"device": 0}), "grid.device: expected a non-empty string"),
    ({"models": [{"spec": "demo"}], "datasets": [{"spec": "digits"}]}, "reference: missing section"),
    (base(models=[{"name": "a"}]), "models[0].spec: missing"),
    (base(models=[{"spec": "demo"}, {"spec": "demo"}]), "models[1].name: duplicate"),
    (base(**{"intrinsic-dim": {"variance": 1.5}}), "intrinsic-dim.variance: must be in (0, 1]"),
    (base(adaptation={"methods": ["residual", "prompt-tuning"]}), "adaptation.methods: 'prompt-tuning'"),
    (base(adaptation={"products": "fp16"}), "adaptation.products"),
    (base(specialization={"rankings": ["S", "X"]}), "specialization.rankings: 'X'"),
    (base(similarity={"split": "dev"}), "similarity.split: 'dev'"),
    (base(extra={}), "config.extra: unknown key"),
    (base(grid={"store-dtype": "bfloat16"}), "grid.store-dtype: 'bfloat16' is not one of float16, float32"),
    (base(**{"intrinsic-dim": {"twonn-discard": 1.0}}), "intrinsic-dim.twonn-discard: must be in [0, 1), got 1.0"),
    (base(specialization={"fractions": [0.5, 1.5]}), "specialization.fractions: must be in (0, 1], got 1.5"),
    (base(specialization={"ablation": "noise"}), "specialization.ablation: 'noise' is not one of zero, mean"),
    (base(adaptation={"init": "zeros"}), "adaptation.init: 'zeros' is not one of ones, paper"),
    (base(adaptation={"finetune-seeds": [0, "1"]}), "adaptation.finetune-seeds: expected an integer, got '1'"),
    (base(adaptation={"tower-datasets": ["digit"]}), "adaptation.tower-datasets: 'digit' is not the name of a [[datasets]] entry"),
    (base(reference={"spec": "fashion-mnist", "split": "dev"}), "reference.split: 'dev' is not one of train, val, test"),
    (base(datasets=[{"spec": 3}]), "datasets[0].spec: expected a non-empty string, got 3"),
    (base(similarity={"noise": 1}), "similarity.noise: expected true or false, got 1"),
])
def test_errors_name_the_key(doc, message):
    with pytest.raises(ResiDualError) as e:
        parse_config(doc)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_vocabularies_come_from_their_owners():
    """Each choice a grid offers is the Literal of the module that owns the concept."""
    from typing import get_args

    from resi_dual.adapters.protocol import METHODS as ADAPTATION_TABLE_METHODS
    from resi_dual.adapters.training import PRODUCTS
    from resi_dual.core.units import CONVENTIONS
    from resi_dual.data.base import SPLITS
    from resi_dual.experiments.config import ADAPTATION_METHODS, GridConfig, convert
    from resi_dual.store.disk import STORE_DTYPES, StoreDtype
    from resi_dual.zeroshot.specialize import METHODS, MODES

    assert sorted(ADAPTATION_METHODS) == sorted(ADAPTATION_TABLE_METHODS)
    assert get_args(StoreDtype) == tuple(STORE_DTYPES)
    assert (SPLITS, CONVENTIONS, PRODUCTS, METHODS, MODES) == (
        ("train", "val", "test"), ("paper", "centred"), ("auto", "float32", "bfloat16"), ("S", "U|T", "U", "random"),
        ("zero", "mean"))
    for convention in CONVENTIONS:
        assert parse_config(base(grid={"convention": convention})).convention == convention
    with pytest.raises(ResiDualError, match="^--store-dtype: 'x' is not one of float16, float32$"):
        convert("--store-dtype", "x", StoreDtype)
    assert GridConfig.__dataclass_fields__["store_dtype"].default == "float32"


def test_store_dtype_and_twonn_discard_are_read():
    cfg = parse_config(base(grid={"store-dtype": "float16"}, **{"intrinsic-dim": {"twonn-discard": 0.0}}))
    assert cfg.store_dtype == "float16" and cfg.intrinsic_dim.twonn_discard == 0.0
    assert parse_config(base()).store_dtype == "float32" and parse_config(base()).intrinsic_dim.twonn_discard == 0.1
    # limits: 0 and "all" mean no limit; TOML keys use dashes
    cfg = parse_config(base(limits={"val": 0, "reference": "all", "noise": 7}))
    assert (cfg.limits.val, cfg.limits.reference, cfg.limits.noise) == (None, None, 7)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text("[grid\n")
    with pytest.raises(ResiDualError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ResiDualError, match="not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["offline.toml", "paper.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.models and cfg.datasets
    if name == "paper.toml":
        assert [m.name for m in cfg.models] == ["clip_b", "clip_l", "openclip_b", "openclip_l", "vit_l", "dinov2_l", "blip_l"]
        assert len(cfg.datasets) == 10 and cfg.limits.reference == 80_000
    else:
        assert [m.spec for m in cfg.models] == ["demo"]
