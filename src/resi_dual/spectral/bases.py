"""Per-unit PCA bases in the output space: the common currency of interpretation and ResiDual.

A :class:`UnitBases` holds, for each unit, its mean and orthonormal principal components (rows,
fixed signs) with explained variances, plus the composition they were fitted on and a content
hash. Adapters store that hash and refuse to load against a different basis. Saved as safetensors
(tensors) with the composition and metadata as JSON in the safetensors header — no pickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resi_dual.errors import ResiDualError
from resi_dual.files import atomic_write, read_safetensors
from resi_dual.store.disk import safetensors_bytes
from resi_dual.core.units import Composition


@dataclass
class UnitBases:
    """PCA of each unit's contributions.

    Attributes:
        composition: the model's units and convention.
        labels: the fitted units' labels, in composition order.
        means: label -> (d_out,) unit mean.
        components: label -> (k_u, d_out) orthonormal rows, by decreasing variance, sign-fixed.
        explained_variance: label -> (k_u,) eigenvalues, ``s² / (n−1)``.
        total_variance: label -> float, trace of the unit's covariance (so ratios are exact even when
            only k_u < d components are kept).
        n_samples: number of samples the bases were fitted on.
        meta: free-form provenance (store path, dataset spec, split …).
    """

    composition: Composition
    labels: list[str]
    means: dict[str, torch.Tensor]
    components: dict[str, torch.Tensor]
    explained_variance: dict[str, torch.Tensor]
    total_variance: dict[str, float]
    n_samples: int
    meta: dict = field(default_factory=dict)

    def explained_variance_ratio(self, label: str) -> torch.Tensor:
        return self.explained_variance[label] / max(self.total_variance[label], 1e-300)

    def n_components_for(self, label: str, threshold: float) -> int:
        """Smallest k whose cumulative explained-variance ratio reaches ``threshold`` (at least 1)."""
        cum = torch.cumsum(self.explained_variance_ratio(label).double(), 0)
        k = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype) - 1e-12).item()) + 1
        return max(1, min(k, cum.numel()))

    def content_hash(self) -> str:
        """sha256 over the composition, labels and every tensor's bytes (float32)."""
        h = hashlib.sha256(json.dumps(self.composition.to_dict(), sort_keys=True).encode())
        for lab in self.labels:
            h.update(lab.encode())
            for t in (self.means[lab], self.components[lab], self.explained_variance[lab]):
                h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {}
        for lab in self.labels:
            tensors[f"{lab}/mean"] = self.means[lab].detach().cpu().numpy()
            tensors[f"{lab}/components"] = self.components[lab].detach().cpu().numpy()
            tensors[f"{lab}/explained_variance"] = self.explained_variance[lab].detach().cpu().numpy()
        header = {
            "composition": self.composition.to_json(),
            "labels": json.dumps(self.labels),
            "total_variance": json.dumps(self.total_variance),
            "n_samples": str(self.n_samples),
            "meta": json.dumps(self.meta),
            "content_hash": self.content_hash(),
        }
        # the store's fixed-layout writer: the same bases give the same bytes (safetensors orders its header at random)
        return atomic_write(path, safetensors_bytes(tensors, header))

    @classmethod
    def load(cls, path: str | Path) -> "UnitBases":
        path = Path(path)
        rewrite = "; write it again with `resi-dual analyze`"
        header, tensors = read_safetensors(path, "bases", rewrite)
        if "composition" not in header:
            raise ResiDualError(f"{path} is not a resi-dual bases file (no composition in its header)")
        try:
            labels = json.loads(header["labels"])
            out = cls(
                composition=Composition.from_json(header["composition"]),
                labels=labels,
                means={lab: tensors[f"{lab}/mean"] for lab in labels},
                components={lab: tensors[f"{lab}/components"] for lab in labels},
                explained_variance={lab: tensors[f"{lab}/explained_variance"] for lab in labels},
                total_variance={k: float(v) for k, v in json.loads(header["total_variance"]).items()},
                n_samples=int(header["n_samples"]),
                meta=json.loads(header["meta"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ResiDualError(f"{path} is not a readable bases file ({reason}){rewrite}") from None
        if header.get("content_hash") and header["content_hash"] != out.content_hash():
            raise ResiDualError(f"{path}: content hash mismatch, the file is corrupt")
        return out
