import json

import pytest
import torch

from resi_dual import runtime


def test_torch_threads_restores_the_count_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with runtime.torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.torch_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with runtime.torch_threads(None):  # None leaves the setting alone
        assert torch.get_num_threads() == before


def test_single_thread_native_limits_sklearns_pools_and_torchs_then_restores_them():
    import sklearn.linear_model  # noqa: F401  (loads sklearn's OpenMP runtime, so threadpoolctl can see it)
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with runtime.torch_threads(2):
        pools = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
        with runtime.single_thread_native():
            assert torch.get_num_threads() == 1
            assert pools and all(p["num_threads"] == 1 for p in threadpool_info())
        assert {p["filepath"]: p["num_threads"] for p in threadpool_info()} == pools
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_faster_products_measures_once_and_caches_per_machine_and_shape(monkeypatch, tmp_path):
    monkeypatch.setenv("RESI_DUAL_CACHE", str(tmp_path))
    timed = []
    real = runtime._products_timer

    def timer(dtype, b, k, d):
        timed.append((dtype, b, k, d))
        run = real(dtype, b, k, d)
        # bfloat16 made 10× slower than measured: the measurement, not the CPU flags, decides
        return (lambda steps: 10 * run(steps) + 1.0) if dtype == torch.bfloat16 else run

    monkeypatch.setattr(runtime, "_products_timer", timer)
    assert runtime.faster_products(8, 40, 16) == "float32"
    assert {t[0] for t in timed} == {torch.float32, torch.bfloat16} and all(t[1:] == (8, 40, 16) for t in timed)
    cached = json.loads((tmp_path / "products.json").read_text())
    assert list(cached.values()) == ["float32"] and next(iter(cached)).endswith("|8x40x16")
    timed.clear()
    assert runtime.faster_products(8, 40, 16) == "float32" and timed == []  # from the cache
    # a cached choice is what the next process uses, whatever it would measure
    (tmp_path / "products.json").write_text(json.dumps({k: "bfloat16" for k in cached}))
    assert runtime.faster_products(8, 40, 16) == "bfloat16" and timed == []
    runtime.faster_products(8, 41, 16)  # another shape: measured again
    assert timed and len(json.loads((tmp_path / "products.json").read_text())) == 2


def test_machine_line_names_cpu_flags_and_threads():
    line = runtime.machine_line()
    assert f"{torch.get_num_threads()} torch threads" in line and runtime.cpu_info()["model"] in line
    assert ("no AMX" in line) == ("amx_tile" not in runtime.cpu_info()["flags"])
