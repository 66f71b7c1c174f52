"""The package top: one documented function per stage, and each gives what its stage gives."""

import numpy as np
import pytest
import torch

import resi_dual as rd


def test_every_stage_is_at_the_top_with_a_docstring():
    for name in ("load_model", "list_models", "load_dataset", "encode", "open_store", "fit_bases",
                 "intrinsic_dimensions", "similarity", "interpret", "zero_shot_classifier", "zero_shot",
                 "specialize", "train_adapter", "apply_adapter"):
        fn = getattr(rd, name)
        assert name in rd.__all__ and fn.__doc__ and len(fn.__doc__.split()) > 8, name


def test_top_functions_match_their_stages(make_toy_source):
    from resi_dual.spectral.intrinsic_dim import unit_intrinsic_dimensions
    from resi_dual.spectral.pca import fit_bases
    from resi_dual.zeroshot import prototype_classifier

    train, val, test = (make_toy_source(n=240, seed=s) for s in (0, 1, 2))
    bases = rd.fit_bases(train, progress=False)
    direct = fit_bases(train, progress=False)
    assert bases.labels == direct.labels
    torch.testing.assert_close(bases.explained_variance["L1H0"], direct.explained_variance["L1H0"])
    ids = rd.intrinsic_dimensions(train, bases, twonn_samples=100, progress=False)
    assert [r.linear_id for r in ids] == [r.linear_id for r in unit_intrinsic_dimensions(
        train, direct, twonn_samples=100, progress=False)]
    same = rd.similarity(bases, bases, units=["L0H0", "L1H0"])
    assert [r.similarity for r in same] == [pytest.approx(1.0)] * 2

    head = prototype_classifier(train)
    report = rd.zero_shot(test, head)
    expected = float((head.logits(test.output()).argmax(1) == torch.as_tensor(test.labels)).float().mean())
    assert report["top1"] == pytest.approx(expected) and report["n"] == 240

    rankings, res = rd.specialize(val, test, head, train_source=train, methods=("S",))
    assert [r.name for r in rankings] == ["S"] and res.accuracy["S"]["mean"][-1] == pytest.approx(res.base_accuracy)

    adapter, metrics = rd.train_adapter(train, val, test, head, "coarse", bases=bases, max_epochs=2, progress=False)
    assert metrics.trainable_parameters == 6 and metrics.test_accuracy == pytest.approx(
        adapter.accuracy(adapter.encode(test)))


def test_progress_true_draws_the_installed_bars_false_is_silent():
    from resi_dual.core import progress
    from resi_dual.report.progress import bars

    shown = []

    def recorder(description, total=None, **fields):
        shown.append((description, total))
        return progress.silent(description, total)

    assert progress.resolve(False) is progress.silent and progress.resolve(None) is progress.silent
    assert progress.resolve(recorder) is recorder
    with progress.task(recorder, "encode", 3) as step:
        step(2)
    assert shown == [("encode", 3)]
    with bars("rich", total=2, loss=0.0) as step:  # the installed default draws this
        step(1, loss=0.5)
    assert progress.resolve(True) is not progress.silent
