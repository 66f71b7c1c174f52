"""The adaptation peers (Tip-Adapter, CLIP-Adapter, linear probe) and the few-shot protocol."""

import numpy as np
import pytest
import torch

from resi_dual.adapters import fewshot, peers
from resi_dual.adapters.peers import Features
from resi_dual.errors import ResiDualError
from tests.adapters.adapter_synth import make_model, make_source


def clustered(n_per_class: int, n_classes: int = 4, d: int = 16, spread: float = 0.35, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, d, generator=torch.Generator().manual_seed(99)), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), d, generator=g)
    return Features(torch.nn.functional.normalize(x, dim=1), labels)


def random_classifier(n_classes=4, d=16):
    return torch.nn.functional.normalize(torch.randn(n_classes, d, generator=torch.Generator().manual_seed(7)), dim=1)


def test_tip_adapter_with_alpha_zero_is_zero_shot():
    tr, te = clustered(8), clustered(20, seed=1)
    w = random_classifier()
    values = torch.nn.functional.one_hot(tr.labels, 4).float()
    got = peers.tip_logits(te.embeddings, tr.embeddings, values, w, 100.0, alpha=0.0, beta=5.5)
    assert torch.equal(got, peers.zero_shot_logits(te.embeddings, w, 100.0))


def test_tip_adapter_with_sharp_cache_is_nearest_neighbour():
    tr = clustered(6)
    g = torch.Generator().manual_seed(3)
    # queries close to one cache key each: as β grows Tip-Adapter becomes the 1-NN classifier of its cache
    te = torch.nn.functional.normalize(tr.embeddings + 0.02 * torch.randn(tr.embeddings.shape, generator=g), dim=1)
    values = torch.nn.functional.one_hot(tr.labels, 4).float()
    got = peers.tip_logits(te, tr.embeddings, values, random_classifier(), 1.0, alpha=1e6, beta=500.0)
    nearest = tr.labels[(te @ tr.embeddings.T).argmax(1)]
    assert torch.equal(got.argmax(1), nearest)
    assert torch.equal(nearest, tr.labels)


def test_tip_adapter_beats_an_uninformative_zero_shot_head():
    tr, va, te = clustered(8), clustered(4, seed=1), clustered(50, seed=2)
    w = almost_alike_classifier()
    res = peers.run_peer("tip-adapter", tr, va, w, 100.0)
    zs = peers.accuracy(peers.zero_shot_logits(te.embeddings, w, 100.0), te.labels)
    assert res.trainable_parameters == 0
    assert res.accuracy(te) > zs + 0.3
    assert res.settings["alpha"] in [float(a) for a in peers.TIP_ALPHAS] and res.settings["beta"] in peers.TIP_BETAS


def test_clip_adapter_with_ratio_zero_is_identity():
    m = peers.ClipAdapterModule(16, ratio=0.0)
    f = clustered(3).embeddings
    assert torch.equal(m(f), f)
    assert sum(p.numel() for p in m.parameters()) == 2 * 16 * 4


def test_linear_probe_matches_sklearn_and_counts_parameters():
    from sklearn.linear_model import LogisticRegression

    tr, va, te = clustered(10), clustered(10, seed=1), clustered(30, seed=2)
    res = peers.linear_probe(tr, va, 4)
    ref = LogisticRegression(C=res.settings["C"], max_iter=1000, tol=1e-6).fit(tr.embeddings.double().numpy(), tr.labels.numpy())
    assert np.array_equal(res.predict(te.embeddings).argmax(1).numpy(), ref.predict(te.embeddings.double().numpy()))
    assert res.trainable_parameters == 4 * 16 + 4 and res.settings["converged"] is True
    assert res.accuracy(te) > 0.8  # the clusters overlap: nearest-centroid gets about 0.85 here


def test_linear_probe_warm_path_reaches_the_cold_fits_optimum_and_records_max_iter():
    """Walking the C grid warm-started lands on each C's own optimum; a fit cut by max_iter is recorded,
    not warned about."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    tr, va = clustered(10), clustered(10, seed=1)
    res = peers.linear_probe(tr, va, 4, c_grid=(1e-2, 1.0, 100.0))
    x, y = tr.embeddings.double().numpy(), tr.labels.numpy()
    cold = LogisticRegression(C=res.settings["C"], max_iter=1000, tol=1e-6).fit(x, y)
    w = res.predict(torch.eye(16)) - res.predict(torch.zeros(1, 16))  # (16, C): the learned rows
    assert torch.allclose(w.double().T, torch.as_tensor(cold.coef_), rtol=1e-3, atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's ConvergenceWarning would fail here
        cut = peers.linear_probe(tr, va, 4, c_grid=(1e4,), max_iter=2)
    assert cut.settings["converged"] is False


def almost_alike_classifier():
    """Class rows nearly alike, as CLIP's text rows are (cosines differ by a few hundredths)."""
    common = torch.nn.functional.normalize(torch.ones(1, 16), dim=1)
    return torch.nn.functional.normalize(common + 0.05 * random_classifier(), dim=1)


def test_trained_peers_choose_lr_on_val_and_beat_zero_shot():
    tr, va, te = clustered(32), clustered(4, seed=1), clustered(30, seed=2)
    w = almost_alike_classifier()
    zs = peers.accuracy(peers.zero_shot_logits(te.embeddings, w, 100.0), te.labels)
    budget = peers.PeerTraining(max_epochs=30, patience=5)
    for name in ("clip-adapter", "tip-adapter-f"):
        res = peers.run_peer(name, tr, va, w, 100.0, budget)
        assert res.settings["lr"] in peers.LR_GRID
        assert res.accuracy(te) > zs + 0.3, name
    assert res.trainable_parameters == len(tr) * 16


def test_unknown_peer_is_one_line():
    with pytest.raises(ResiDualError, match="unknown peer"):
        peers.run_peer("coop+++", clustered(2), clustered(2), random_classifier(), 1.0)


def test_few_shot_split_counts_and_caps_validation():
    labels = np.repeat(np.arange(5), 30)
    for k in fewshot.SHOTS:
        s = fewshot.few_shot_split(labels, labels, k, seed=1)
        assert np.bincount(labels[s.train_rows]).tolist() == [k] * 5
        assert np.bincount(labels[s.val_rows]).tolist() == [min(k, 4)] * 5
    a, b = fewshot.few_shot_split(labels, labels, 4, 1), fewshot.few_shot_split(labels, labels, 4, 2)
    assert not np.array_equal(a.train_rows, b.train_rows)
    assert np.array_equal(a.train_rows, fewshot.few_shot_split(labels, labels, 4, 1).train_rows)
    with pytest.raises(ResiDualError, match="class 2 has 3 examples"):
        fewshot.per_class_rows(np.array([0] * 5 + [1] * 5 + [2] * 3), 4, 0)


class RecordingSource:
    """Wraps a store and records every labelled row that anything reads through it."""

    def __init__(self, inner):
        self.inner, self.rows_read = inner, set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def raw(self, rows=None, dtype=torch.float32):
        idx = np.arange(len(self.inner)) if rows is None else np.asarray(rows).reshape(-1)
        self.rows_read.update(int(i) for i in idx)
        return self.inner.raw(rows, dtype)

    def iter_blocks(self, *a, **k):  # reading whole splits is exactly what the protocol must not do
        raise AssertionError("a few-shot run iterated over a whole labelled split")


def test_a_few_shot_run_reads_only_its_shots_and_capped_validation():
    comp, readout = make_model()
    train = RecordingSource(make_source(comp, readout, 60, seed=1, labels=np.repeat(np.arange(3), 20)))
    val = RecordingSource(make_source(comp, readout, 45, seed=2, labels=np.repeat(np.arange(3), 15)))
    test = make_source(comp, readout, 30, seed=3, labels=np.repeat(np.arange(3), 10))
    w = torch.nn.functional.normalize(torch.randn(3, comp.d_out), dim=1)
    rows = fewshot.run_peers(train, val, test, w, 10.0, shots=2, seed=1,
                             budget=peers.PeerTraining(max_epochs=2, patience=1))
    split = fewshot.few_shot_split(train.labels, val.labels, 2, 1)
    assert train.rows_read == set(split.train_rows.tolist()) and len(train.rows_read) == 6
    assert val.rows_read == set(split.val_rows.tolist()) and len(val.rows_read) == 6
    assert {r["method"] for r in rows} == set(peers.CACHED_PEERS)  # no model given: no CoOp
    assert all(r["n"] == {"train": 6, "val": 6, "test": 30} for r in rows)


def test_a_few_shot_adapter_run_reads_only_its_shots_and_capped_validation():
    from resi_dual.adapters import AdapterConfig, TrainConfig
    from resi_dual.adapters.protocol import train_and_evaluate
    from resi_dual.spectral.pca import fit_bases
    from resi_dual.zeroshot.classifier import prototype_classifier

    comp, readout = make_model()
    reference = make_source(comp, readout, 50, seed=4)  # unlabelled use only: the PCA bases
    train = RecordingSource(make_source(comp, readout, 60, seed=1, labels=np.repeat(np.arange(3), 20)))
    val = RecordingSource(make_source(comp, readout, 45, seed=2, labels=np.repeat(np.arange(3), 15)))
    test = make_source(comp, readout, 30, seed=3, labels=np.repeat(np.arange(3), 10))
    split = fewshot.few_shot_split(train.labels, val.labels, 4, 7)
    head = prototype_classifier(train, rows=split.train_rows)  # vision-only heads come from the shots too
    assert head.logit_scale == 100.0
    _, m = train_and_evaluate(AdapterConfig("residual"), train, val, test, head.weights, head.logit_scale,
                              bases=fit_bases(reference, progress=False), shots=4,
                              train_config=TrainConfig(lr="sweep", seed=7, max_epochs=3, patience=2, progress=False))
    assert train.rows_read == set(split.train_rows.tolist()) and len(train.rows_read) == 12
    assert val.rows_read == set(split.val_rows.tolist()) and len(val.rows_read) == 12
    assert m.n == {"train": 12, "val": 12, "test": 30}
    assert [c["lr"] for c in m.details["lr_sweep"]] == [0.008, 0.08, 0.8, 8.0] and m.lr in (0.008, 0.08, 0.8, 8.0)


def test_run_metrics_round_trip_the_train_json():
    """RunMetrics reads the JSON `resi-dual train` writes (and wrote before the record existed) and writes it back."""
    from resi_dual.adapters.metrics import RunMetrics
    from resi_dual.errors import ResiDualError

    old = {"variant": "coarse", "trainable_parameters": 6, "adapted_units": 6, "components": 6, "kept_units": [],
           "accuracy": {"val": 0.5, "test": 0.25, "zeroshot_val": 0.4, "zeroshot_test": 0.2}, "epochs": 3,
           "best_epoch": 2, "lr": 0.8, "note": "", "seconds": {"total": 1.5}, "n": {"train": 9, "val": 3, "test": 4},
           "shots": None, "seed": 1, "model_spec": "demo", "lr_sweep": [], "history": [{"epoch": 1, "loss": 2.0}]}
    m = RunMetrics.from_dict(old)
    assert (m.val_accuracy, m.test_accuracy, m.zeroshot_test, m.epochs, m.lr) == (0.5, 0.25, 0.2, 3, 0.8)
    assert m.details == {"adapted_units": 6, "components": 6, "kept_units": [], "lr_sweep": []}
    assert m.to_dict() == old and RunMetrics.from_dict(m.to_dict()) == m
    peer = RunMetrics.from_dict({"variant": "tip-adapter", "trainable_parameters": 0, "accuracy": {"val": 1.0, "test": 0.5}})
    assert peer.to_dict()["accuracy"] == {"val": 1.0, "test": 0.5} and peer.epochs == 0 and peer.zeroshot_test is None
    with pytest.raises(ResiDualError, match="accuracy.val"):
        RunMetrics.from_dict({"variant": "x", "trainable_parameters": 0, "accuracy": {"val": 1.0}})


def test_tip_search_equals_the_plain_double_loop():
    """The batched α/β search picks exactly what scoring every (β, α) in turn picks."""
    for seed, scale in ((0, 100.0), (1, 37.0), (2, 100.0)):
        tr, va = clustered(6, seed=seed), clustered(5, seed=seed + 10, spread=0.8)
        w, values = almost_alike_classifier(), torch.nn.functional.one_hot(tr.labels, 4).float()
        ref = (-1.0, 0.0, 0.0)
        zs = peers.zero_shot_logits(va.embeddings, w, scale)
        for beta in peers.TIP_BETAS:
            cache = torch.exp(-beta * (1.0 - va.embeddings @ tr.embeddings.T)) @ values
            for alpha in np.asarray(peers.TIP_ALPHAS) * scale / 100.0:
                acc = peers.accuracy(zs + alpha * cache, va.labels)
                if acc > ref[0]:
                    ref = (acc, float(alpha), float(beta))
        assert peers._search_alpha_beta(va, tr.embeddings, values, w, scale) == ref


def test_memo_reuses_the_test_split_without_changing_results(monkeypatch):
    """Across K × seeds the test coefficients are encoded once per projection; the metrics are the same."""
    from resi_dual.adapters import AdapterConfig, TrainConfig
    from resi_dual.adapters import adapter as adapter_mod
    from resi_dual.adapters.protocol import train_and_evaluate
    from resi_dual.spectral.pca import fit_bases

    comp, readout = make_model()
    reference = make_source(comp, readout, 50, seed=4)
    train = make_source(comp, readout, 60, seed=1, labels=np.repeat(np.arange(3), 20))
    val = make_source(comp, readout, 45, seed=2, labels=np.repeat(np.arange(3), 15))
    test = make_source(comp, readout, 30, seed=3, labels=np.repeat(np.arange(3), 10))
    encodes = []
    real = adapter_mod.encode_split
    monkeypatch.setattr(adapter_mod, "encode_split", lambda src, *a, **k: encodes.append(src is test) or real(src, *a, **k))
    w = torch.nn.functional.normalize(torch.randn(3, comp.d_out, generator=torch.Generator().manual_seed(0)), dim=1)
    bases, memo = fit_bases(reference, progress=False), {}
    for variant in ("residual", "linear"):
        for seed in (1, 2):
            tc = TrainConfig(lr=0.08 if variant == "residual" else 1e-2, seed=seed, max_epochs=3, patience=2, progress=False)
            a, b = (train_and_evaluate(AdapterConfig(variant, seed=seed), train, val, test, w, 100.0, bases=bases,
                                       shots=4, train_config=tc, memo=m)[1].to_dict() for m in (None, memo))
            a.pop("seconds"), b.pop("seconds")
            assert a == b, variant
    assert sum(encodes) == 4 + 2  # without the memo: every run; with it: once per projection
    assert sum(1 for k in memo if k[0] == "test") == 2 and sum(1 for k in memo if k[0] == "zero-shot") == 1


def test_peer_training_keeps_its_start_when_no_epoch_beats_it_on_val():
    """The peers' loop shares the λ-adapters' rule (EarlyStopping): the untrained module is epoch 0."""
    val = clustered(10, seed=1, spread=0.1)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(99)), dim=1)
    head = torch.nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(10 * centres)  # the class centres: perfect on val from the start
    start = {k: v.clone() for k, v in head.state_dict().items()}
    noise = clustered(10, seed=2)
    noise = Features(noise.embeddings, noise.labels[torch.randperm(len(noise), generator=torch.Generator().manual_seed(3))])
    budget = peers.PeerTraining(max_epochs=4, patience=2)
    acc, state = peers._train(head, head, noise, val, 0.5, budget)
    assert acc == peers.accuracy(val.embeddings @ start["weight"].T, val.labels) == 1.0
    assert torch.equal(state["weight"], start["weight"])
    # and a task training can improve is trained: a zero head starts at chance
    zero = torch.nn.Linear(16, 4, bias=False)
    torch.nn.init.zeros_(zero.weight)
    acc, state = peers._train(zero, zero, clustered(10, seed=2), val, 0.05, budget)
    assert acc > 0.9 and float(state["weight"].abs().max()) > 0


def test_early_stopping_counts_the_start_as_epoch_zero():
    from resi_dual.adapters.training import EarlyStopping

    snaps = iter(range(10))
    stop = EarlyStopping(0.5, lambda: next(snaps), patience=2)
    assert (stop.best_epoch, stop.best_state) == (0, 0)
    assert not stop.update(1, 0.5)  # a tie is not better: the earlier weights stay
    assert stop.update(2, 0.4) and (stop.best_epoch, stop.best_accuracy, stop.best_state) == (0, 0.5, 0)
    stop = EarlyStopping(0.5, lambda: next(snaps), patience=2)
    assert not stop.update(1, 0.6) and (stop.best_epoch, stop.best_state) == (1, 2)
    assert not stop.update(2, 0.55) and stop.update(3, 0.6)  # patience counts epochs since the best
