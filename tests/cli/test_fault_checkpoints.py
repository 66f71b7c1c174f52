"""Fault corpus, checkpoints: no checkpoint's code ever runs, and each refusal is one line naming the file."""

import json
import pickle
import shutil

import pytest

from fault_helpers import assert_one_line_error, run_cli


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _copy(world, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(world["root"] / "vit", dst)
    return dst


@pytest.mark.parametrize("file", ["config.json", "preprocessor_config.json"])
def test_auto_map_is_refused(world, tmp_path, capsys, file):
    ckpt = _copy(world, tmp_path)
    path = ckpt / file
    data = json.loads(path.read_text()) if path.exists() else {"image_processor_type": "ViTImageProcessor"}
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoImageProcessor": "evil.EvilProcessor"}
    path.write_text(json.dumps(data))
    (ckpt / "evil.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('x')\n")
    before = sorted(p.name for p in ckpt.iterdir())
    rc, out, err = run_cli(["encode", "--model", f"hf:{ckpt}", "--dataset", f"folder:{world['data']}",
                            "--out", tmp_path / "s", "--no-progress"], capsys)
    assert_one_line_error(rc, err, str(path), "auto_map")
    assert not (ckpt / "RAN").exists() and sorted(p.name for p in ckpt.iterdir()) == before
    assert out == "" and not (tmp_path / "s").exists()


def test_every_transformers_load_passes_trust_remote_code_false(world, monkeypatch):
    """Spy on each from_pretrained the loader calls: every one is told trust_remote_code=False."""
    import transformers

    from resi_dual import load_model

    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoImageProcessor, transformers.AutoTokenizer, transformers.ViTModel):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code", "missing")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    with pytest.warns(UserWarning):
        load_model(world["spec"])
    assert {name for name, _ in calls} >= {"AutoConfig", "ViTModel"}
    assert all(flag is False for _, flag in calls), calls


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def test_malicious_pytorch_model_bin(world, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    shutil.copy(world["root"] / "vit" / "config.json", ckpt / "config.json")
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps({"embeddings.cls_token": _Evil()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["trace", "--model", f"hf:{ckpt}", "--batch", "1"], capsys)
    assert_one_line_error(rc, err, "pickle", "safetensors")
    assert not (tmp_path / "PWNED").exists()


def test_relative_hf_path_that_does_not_exist_is_not_a_hub_id(tmp_path, capsys, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["trace", "--model", "hf:models/missing"], capsys)
    assert_one_line_error(rc, err, "no such checkpoint directory models/missing")
