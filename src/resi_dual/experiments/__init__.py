"""The paper's four experiments as resumable grids of cached cells.

``resi-dual experiment NAME --config GRID.toml --out DIR`` — see :mod:`resi_dual.experiments.runners`
for the experiments (``resi_dual.report.experiments`` writes their tables and figures), :mod:`~resi_dual.experiments.config` for the grid file, and
:mod:`~resi_dual.experiments.cells` for the cache.
"""

from resi_dual.experiments.config import GridConfig, load_config, parse_config
from resi_dual.experiments.runners import EXPERIMENTS, ExperimentRun, compute_experiment

__all__ = ["EXPERIMENTS", "ExperimentRun", "GridConfig", "compute_experiment", "load_config", "parse_config"]
