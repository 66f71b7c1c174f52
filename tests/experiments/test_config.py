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
    assert cfg.adaptation.products == "auto"
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
    (base(adaptation={"methods": ["residual", "lora"]}), "adaptation.methods: 'lora'"),
    (base(adaptation={"products": "fp16"}), "adaptation.products"),
    (base(specialization={"rankings": ["S", "X"]}), "specialization.rankings: 'X'"),
    (base(similarity={"split": "dev"}), "similarity.split: 'dev'"),
    (base(extra={}), "config.extra: unknown key"),
])
def test_errors_name_the_key(doc, message):
    with pytest.raises(ResiDualError) as e:
        parse_config(doc)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


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
