"""Full fine-tuning of the vision encoder on images: the paper's strongest (and costliest) baseline.

Unlike the other adapters this reruns the backbone on every step, so it needs the model and the
images: the model spec and dataset spec recorded in the stores' manifests, and the same samples
(matched by sample id). The classifier (text prompts or class-mean prototypes) is built once from the
frozen model and stays frozen. Schedule-Free AdamW, gradient clipping at norm 1.0, batch 64, early
stopping on validation accuracy (docs/DESIGN.md §8); the learning rate is chosen on validation from
``LR_SWEEP["finetune"]`` (the paper's 1e-5 and two decades above it) unless given. WiSE-FT (Wortsman et
al.) comes with it: the weights ``(1 − α) θ_zero-shot + α θ_fine-tuned`` with α chosen on validation. The backbone trains on the model's device
(``device=`` of :func:`finetune_from_stores`); pixel batches, the classifier and the labels are moved
there, and the saved weights and metrics are CPU values.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.adapters.adapter import DEFAULT_LR, LR_SWEEP
from resi_dual.adapters.metrics import RunMetrics
from resi_dual.adapters.modules import classify
from resi_dual.adapters.training import EarlyStopping, TrainConfig
from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError


def vision_parameters(model, pixels: torch.Tensor) -> list[torch.nn.Parameter]:
    """The library model's parameters that the image embedding depends on (found by one backward)."""
    lib = model.library_model
    for p in lib.parameters():
        p.requires_grad_(True)
        p.grad = None
    model._forward(model.check_pixels(pixels)).float().sum().backward()
    params = [p for p in lib.parameters() if p.grad is not None]
    keep = {id(p) for p in params}
    for p in lib.parameters():
        p.grad = None
        p.requires_grad_(id(p) in keep)  # the text tower stays frozen
    return params


def finetune(
    model,
    train_images: list,
    train_labels: np.ndarray,
    val_images: list,
    val_labels: np.ndarray,
    classifier: torch.Tensor,
    logit_scale: float,
    lr: float = DEFAULT_LR["finetune"],
    epochs: int = TrainConfig.max_epochs,
    patience: int = TrainConfig.patience,
    batch_size: int = TrainConfig.batch_size,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    params: list | None = None,
) -> dict:
    """Fine-tune ``model``'s vision encoder in place; leave it at its best-validation weights.

    Args:
        model: a TracedModel (its ``library_model`` is trained; ``_forward`` is the plain image forward).
        params: the parameters to train (default: every one the image embedding depends on; LoRA passes its own).
        train_images, val_images: lists of PIL images; *_labels: (n,) int64.
        classifier: (C, d_out) frozen class rows; logit_scale: float.
    Returns:
        dict with best_val_accuracy, best_epoch, epochs, trainable_parameters, history, seconds.
    """
    import schedulefree

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lib = model.library_model
    device = model.device
    classifier = classifier.to(device)
    params = params if params is not None else vision_parameters(model, model.preprocess(train_images[:2]))
    opt = schedulefree.AdamWScheduleFree(params, lr=lr)
    y_train = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64).to(device)
    n, steps = len(train_images), math.ceil(len(train_images) / batch_size)
    history: list[dict] = []
    lib.eval()
    stop = EarlyStopping(accuracy(model, val_images, val_labels, classifier, logit_scale, batch_size),
                         lambda: [p.detach().clone() for p in params], patience)
    with task(progress, "finetune", epochs * steps, loss=float("nan"), val=float("nan")) as advance:
        for epoch in range(1, epochs + 1):
            lib.train()
            opt.train()
            total = 0.0
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                b = perm[s : s + batch_size].to(device)
                px = model.preprocess([train_images[i] for i in b.tolist()])  # CPU; check_pixels moves it
                loss = F.cross_entropy(classify(model._forward(model.check_pixels(px)).float(), classifier, logit_scale), y_train[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                total += float(loss.detach()) * len(b)
                advance()
            lib.eval()
            opt.eval()
            acc = accuracy(model, val_images, val_labels, classifier, logit_scale, batch_size)
            history.append({"epoch": epoch, "loss": total / n, "val_accuracy": acc})
            advance(0, loss=total / n, val=acc)
            if stop.update(epoch, acc):
                break
    with torch.no_grad():
        for p, q in zip(params, stop.best_state):
            p.copy_(q)
    lib.eval()
    return {"best_val_accuracy": stop.best_accuracy, "best_epoch": stop.best_epoch, "epochs": len(history),
            "trainable_parameters": int(sum(p.numel() for p in params)), "history": history,
            "seconds": time.perf_counter() - t0, "lr": lr}


@torch.no_grad()
def accuracy(model, images: list, labels: np.ndarray, classifier: torch.Tensor, logit_scale: float, batch_size: int = 64) -> float:
    """Top-1 accuracy of the model's own embedding under the frozen classifier."""
    if not images:
        return float("nan")
    hits = 0
    classifier = classifier.to(model.device)
    for s in range(0, len(images), batch_size):
        px = model.preprocess(images[s : s + batch_size])
        pred = classify(model._forward(model.check_pixels(px)).float(), classifier, logit_scale).argmax(1).cpu()
        hits += int((pred == torch.as_tensor(np.asarray(labels[s : s + batch_size]))).sum())
    return hits / len(images)


def _images_of(store, data_root: str | None = None) -> list:
    """The store's images, loaded from its dataset spec and matched by sample id.

    ``data_root``: where a ``torchvision:`` dataset lives; default the folder recorded in the store's
    manifest when it was encoded (``run.data_root``). The class names are the store's own.
    """
    from resi_dual.data.reopen import reopen_images

    return reopen_images(store.meta, store.sample_ids, store.class_names, data_root=data_root)


#: WiSE-FT's mixing coefficients, chosen on validation (α = 0 is the zero-shot model, 1 the fine-tuned one).
WISE_ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def wise_ft(model, params: list, zero: list, tuned: list, val_images, val_labels, classifier, logit_scale,
            batch_size: int = 64) -> dict:
    """Set ``params`` to the WiSE-FT interpolation whose validation accuracy is best (ties: the smaller α).

    Returns ``{"alpha", "val_accuracy", "curve": [(α, val accuracy)]}``; the model keeps the chosen weights."""
    curve = []
    for alpha in WISE_ALPHAS:
        with torch.no_grad():
            for p, a, b in zip(params, zero, tuned):
                p.copy_((1.0 - alpha) * a + alpha * b)
        curve.append((alpha, accuracy(model, val_images, val_labels, classifier, logit_scale, batch_size)))
    alpha, val = max(curve, key=lambda c: (c[1], -c[0]))
    with torch.no_grad():
        for p, a, b in zip(params, zero, tuned):
            p.copy_((1.0 - alpha) * a + alpha * b)
    return {"alpha": alpha, "val_accuracy": val, "curve": curve}


def finetune_from_stores(train, val, test, shots: int | None = None, seed: int = 1, lr: float | str = "sweep",
                         epochs: int = TrainConfig.max_epochs, patience: int = TrainConfig.patience,
                         batch_size: int = TrainConfig.batch_size, progress: bool = True,
                         weights_out=None, device: str = "cpu", data_root: str | None = None,
                         logit_scale: float | None = None, method: str = "finetune") -> RunMetrics:
    """The ``finetune`` row (with its ``wise-ft`` companion) or the ``lora`` row of the protocol: same
    samples, classifier, few-shot rows and selection rule as the adapters.

    ``lr``: a number, or ``"sweep"`` (the best on validation of ``LR_SWEEP[method]``). ``device``
    (``cpu``, ``cuda``, ``cuda:N``, ``mps``) is where the backbone is trained. The images are reloaded
    from the dataset spec in the stores' manifests; ``data_root`` is where a ``torchvision:`` dataset
    lives (default: the folder recorded when each store was encoded). ``logit_scale``: the frozen head's
    temperature during training (default the head's own, as the cached-feature adapters). ``method``:
    ``finetune`` (every vision parameter) or ``lora`` (low-rank updates of the attention projections
    through peft, :mod:`resi_dual.adapters.lora`)."""
    from resi_dual import load_model
    from resi_dual.adapters.protocol import check_splits, labelled_rows, training_note
    from resi_dual.zeroshot import classifier_for_source

    check_splits(train, val, test)
    spec = train.meta.model_spec
    if not spec:
        raise ResiDualError(f"{method} needs the model spec recorded in the store manifest")
    model = load_model(spec, convention=train.composition.convention, device=device)
    split = labelled_rows(train, val, shots, seed)
    tr_rows = np.arange(len(train)) if split is None else split.train_rows
    va_rows = np.arange(len(val)) if split is None else split.val_rows
    head = classifier_for_source(train, model=model, train_source=train, train_rows=None if split is None else tr_rows)
    scale = head.logit_scale if logit_scale is None else float(logit_scale)
    tr_images, va_images = _images_of(train, data_root), _images_of(val, data_root)
    tr_images, va_images = [tr_images[i] for i in tr_rows], [va_images[i] for i in va_rows]
    te_images = _images_of(test, data_root)
    zs_test = accuracy(model, te_images, test.labels, head.weights, scale, batch_size)
    params = vision_parameters(model, model.preprocess(tr_images[:2]))
    if method == "lora":
        from resi_dual.adapters.lora import add_lora

        params = add_lora(model, params)
    zero = [p.detach().clone() for p in params]
    candidates = LR_SWEEP[method] if lr == "sweep" else (float(lr),)
    best, best_state, sweep, seconds = None, None, [], 0.0
    for cand in candidates:
        with torch.no_grad():
            for p, z in zip(params, zero):
                p.copy_(z)
        res = finetune(model, tr_images, train.labels[tr_rows], va_images, val.labels[va_rows], head.weights,
                       scale, cand, epochs, patience, batch_size, 1.0, seed, progress, params=params)
        seconds += res["seconds"]
        sweep.append({"lr": cand, "val_accuracy": res["best_val_accuracy"], "epochs": res["epochs"]})
        if best is None or res["best_val_accuracy"] > best["best_val_accuracy"]:
            best, best_state = res, [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(b)
    test_acc = accuracy(model, te_images, test.labels, head.weights, scale, batch_size)
    if weights_out is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.library_model.state_dict().items()}, str(weights_out),
                  metadata={"model_spec": spec, "variant": method})
    out = RunMetrics(
        variant=method, trainable_parameters=best["trainable_parameters"], val_accuracy=best["best_val_accuracy"],
        test_accuracy=test_acc, zeroshot_test=zs_test, epochs=best["epochs"], best_epoch=best["best_epoch"],
        lr=best["lr"], seed=seed, shots=shots, n={"train": len(tr_rows), "val": len(va_rows), "test": len(test)},
        seconds={"total": seconds}, model_spec=spec,
        note=training_note(best["lr"], candidates if lr == "sweep" else (), best["epochs"], best["best_epoch"]),
        history=tuple(best["history"]),
        details={"lr_choice": "sweep" if lr == "sweep" else "given", "lr_sweep": sweep, "logit_scale": scale})
    if method == "finetune":
        wise = wise_ft(model, params, zero, best_state, va_images, val.labels[va_rows], head.weights, scale, batch_size)
        wise["test_accuracy"] = accuracy(model, te_images, test.labels, head.weights, scale, batch_size)
        out = out.with_details(wise_ft=wise)
    return out
