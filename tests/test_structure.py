"""The shape of the package, checked on its source (an AST scan, nothing imported): the data flow
goes one way (a later stage may import an earlier one, never the reverse), no module is over ~400
lines and no function over 80 (docs/DESIGN.md, the data flow as a map of the folders)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resi_dual"
#: the stages of the data flow, bottom to top; the package's top-level modules are outside them
STAGES = ("core", "models", "data", "store", "spectral", "interpret", "zeroshot", "adapters", "experiments",
          "report", "cli")
#: top-level modules every stage may use (they import no stage themselves)
FOUNDATION = ("errors", "files", "runtime")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(("resi_dual", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def _stage(module: str) -> str | None:
    """The stage a ``resi_dual.…`` module belongs to ("foundation" for the shared top-level ones)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1] if parts[1] in STAGES else None


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Every ``resi_dual`` module imported anywhere in the tree (function-level imports too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("resi_dual.")}


def _rank(stage: str) -> int:
    return -1 if stage == "foundation" else STAGES.index(stage)


def test_the_stage_order_is_the_one_the_team_documents():
    assert STAGES[0] == "core" and STAGES[-1] == "cli" and len(set(STAGES)) == len(STAGES)
    assert all((SRC / s).is_dir() for s in STAGES)
    assert _stage("resi_dual.spectral.neighbours") == "spectral" and _stage("resi_dual.files") == "foundation"
    assert _stage("resi_dual.demo") is None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_later_stage(path):
    module = _name(path)
    stage = _stage(module)
    if stage is None:  # the package top (API, demo, __main__) may use every stage
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    later = sorted(m for m in _imports(tree, module) if _stage(m) is not None and _rank(_stage(m)) > _rank(stage))
    assert not later, f"{module} ({stage}) imports a later stage: {', '.join(later)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name} has {len(lines)} lines (split it into named pieces)"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse("\n".join(lines)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_scan_sees_function_level_imports():
    tree = ast.parse("def f():\n    from resi_dual.cli import main\n")
    assert _imports(tree, "resi_dual.core.units") == {"resi_dual.cli", "resi_dual.cli.main"}
