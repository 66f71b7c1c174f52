"""The record of one training run, shared by the adapters' protocol, full fine-tuning, the peers, the
``train`` command and the experiment grid (which before agreed on a metrics dict only by convention).

Its JSON form is the one ``resi-dual train`` has always written (``accuracy: {val, test, zeroshot_…}``
nested, everything variant-specific at the top level), so files written earlier read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from resi_dual.errors import ResiDualError


@dataclass(frozen=True)
class RunMetrics:
    """One run: the selected checkpoint's accuracies and how it was reached.

    ``details`` holds what only some runs have (adapter layout, train config, basis hash, the stores,
    the lr sweep, WiSE-FT, the adapter file …), under the keys the JSON form uses.
    """

    variant: str  # adapter variant, ``finetune`` or a peer
    trainable_parameters: int
    val_accuracy: float  # best validation accuracy: the checkpoint that was kept
    test_accuracy: float  # that checkpoint on the test split (touched once)
    zeroshot_test: float | None = None  # the frozen classifier on the model's own test embeddings
    zeroshot_val: float | None = None  # the same on the validation rows used
    epochs: int = 0  # epochs run (early stopping included)
    best_epoch: int = 0  # epoch of the kept checkpoint
    lr: float | None = None  # learning rate of the kept run
    seed: int = 0
    shots: int | None = None  # K examples per class, or None for the whole train split
    n: dict = field(default_factory=dict)  # rows per split: train, val, test
    seconds: dict = field(default_factory=dict)  # wall time: total (and cache, train)
    model_spec: str | None = None
    note: str = ""  # e.g. the chosen learning rate sits at an edge of its grid
    history: tuple[dict, ...] = ()  # one dict per epoch of the kept run
    details: dict = field(default_factory=dict)

    def with_details(self, **more) -> "RunMetrics":
        return replace(self, details={**self.details, **more})

    def to_dict(self) -> dict:
        """The JSON form (``resi-dual train``'s per-seed file)."""
        acc = {"val": self.val_accuracy, "test": self.test_accuracy}
        if self.zeroshot_val is not None:
            acc["zeroshot_val"] = self.zeroshot_val
        if self.zeroshot_test is not None:
            acc["zeroshot_test"] = self.zeroshot_test
        d = {"variant": self.variant, "trainable_parameters": self.trainable_parameters, "accuracy": acc}
        for f in fields(self):
            if f.name not in _NESTED:
                d[f.name] = getattr(self, f.name)
        d.update(self.details)
        d["history"] = list(self.history)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunMetrics":
        try:
            acc = d["accuracy"]
            kwargs = dict(variant=d["variant"], trainable_parameters=int(d["trainable_parameters"]),
                          val_accuracy=acc["val"], test_accuracy=acc["test"], zeroshot_val=acc.get("zeroshot_val"),
                          zeroshot_test=acc.get("zeroshot_test"))
        except (KeyError, TypeError):
            raise ResiDualError("run metrics need variant, trainable_parameters and accuracy.val / .test") from None
        plain = {f.name for f in fields(cls)} - _NESTED
        kwargs.update({k: d[k] for k in plain if k in d})
        kwargs["history"] = tuple(d.get("history") or ())
        kwargs["details"] = {k: v for k, v in d.items() if k not in plain and k not in _NESTED | {"accuracy"}}
        return cls(**kwargs)


#: fields the JSON form nests under ``accuracy`` or writes itself
_NESTED = {"variant", "trainable_parameters", "val_accuracy", "test_accuracy", "zeroshot_val", "zeroshot_test",
           "history", "details"}
