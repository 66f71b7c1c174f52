"""Spectral stage of resi-dual: per-unit PCA, intrinsic dimension and cross-dataset similarity.

* :mod:`~resi_dual.spectral.pca` — streaming per-unit PCA from feature moments (`fit_bases`, `UnitPCA`);
* :mod:`~resi_dual.spectral.twonn` — TwoNN with exact blocked 2-NN (`TwoNN`);
* :mod:`~resi_dual.spectral.intrinsic_dim` — linear ID, PC1 ratio, participation ratio, the per-unit table;
* :mod:`~resi_dual.spectral.similarity` — the paper's normalised spectral cosine;
* :mod:`~resi_dual.spectral.bases` — `UnitBases`, the saved result every later stage reads.
"""

from resi_dual.spectral.bases import UnitBases
from resi_dual.spectral.intrinsic_dim import linear_id, participation_ratio, pc1_ratio, unit_intrinsic_dimensions
from resi_dual.spectral.pca import UnitMoments, UnitPCA, fit_bases
from resi_dual.spectral.similarity import similarity_matrix, similarity_table, spectral_cosine
from resi_dual.spectral.twonn import TwoNN, two_nearest_neighbours

__all__ = [
    "UnitBases", "UnitMoments", "UnitPCA", "fit_bases", "TwoNN", "two_nearest_neighbours", "linear_id",
    "participation_ratio", "pc1_ratio", "unit_intrinsic_dimensions", "similarity_matrix", "similarity_table",
    "spectral_cosine",
]
