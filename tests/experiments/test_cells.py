"""The cell cache: keys follow settings and dependencies; finished cells are skipped, partial ones redone."""

import json

import pytest

from resi_dual.errors import ResiDualError
from resi_dual.experiments.cells import CELL_FILE, Cell, topological


def make(tmp_path, calls, value=1, other=0):
    def writer(name):
        def compute(cell, work):
            calls.append(name)
            (work / "out.txt").write_text(str(cell.settings))
            return {"name": name}
        return compute

    a = Cell("store", "a", {"value": value}, [], writer("a"), root=tmp_path)
    b = Cell("store", "b", {"value": other}, [], writer("b"), root=tmp_path)
    c = Cell("bases", "a", {}, [a], writer("c"), root=tmp_path)
    d = Cell("analysis", "ab", {"k": 1}, [c, b], writer("d"), root=tmp_path)
    return a, b, c, d


def run_all(cells):
    return [c.label for c in topological(cells) if c.run()]


def test_finished_cells_are_skipped(tmp_path):
    calls = []
    d = make(tmp_path, calls)[-1]
    assert run_all([d]) == ["store/a", "bases/a", "store/b", "analysis/ab"]
    assert run_all([make(tmp_path, calls)[-1]]) == []
    assert calls == ["a", "c", "b", "d"]
    rec = json.loads((d.path / CELL_FILE).read_text())
    assert rec["key"] == d.key and rec["result"] == {"name": "d"} and len(rec["deps"]) == 2


def test_changed_setting_recomputes_only_what_depends_on_it(tmp_path):
    calls = []
    run_all([make(tmp_path, calls)[-1]])
    a0, b0, c0, d0 = make(tmp_path, [])
    a1, b1, c1, d1 = make(tmp_path, calls, value=2)
    assert a1.key != a0.key and c1.key != c0.key and d1.key != d0.key
    assert b1.key == b0.key  # the sibling store does not depend on the change
    calls.clear()
    assert run_all([d1]) == ["store/a", "bases/a", "analysis/ab"]


def test_interrupted_cell_is_redone(tmp_path):
    calls = []
    a = make(tmp_path, calls)[0]
    a.path.mkdir(parents=True)
    (a.path / "junk").write_text("half written")
    assert a.run() and not (a.path / "junk").exists() and a.done()
    # a cell.json from other settings does not count as done
    (a.path / CELL_FILE).write_text(json.dumps({"key": "other"}))
    assert not a.done()


def test_missing_dependency_is_an_error(tmp_path):
    c = make(tmp_path, [])[2]
    with pytest.raises(ResiDualError, match="needs store/a"):
        c.run()
