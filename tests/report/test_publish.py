"""docs/results is made by copying each experiment's tables and figures and writing an index."""

import json

from resi_dual.report.publish import publish
from resi_dual.report.tables import write_table


def test_publish_copies_tables_and_indexes_them(tmp_path):
    run = tmp_path / "run" / "adaptation"
    write_table([{"model": "demo", "method": "residual", "test_accuracy": 0.61234}], run / "summary", title="Adaptation")
    (run / "figures").mkdir()
    (run / "figures" / "demo.png").write_bytes(b"\x89PNG")
    (run / "run.json").write_text(json.dumps({"cells": 5, "computed": 2, "cached": 3, "seconds": 12.4}))
    index = publish(tmp_path / "run", tmp_path / "docs", title="Offline grid", note="Ran in 12 s.")
    text = index.read_text()
    assert text.startswith("# Offline grid\n\nRan in 12 s.")
    assert "| demo | residual | 0.6123 |" in text  # the summary table inline, rounded
    assert "5 cells (2 computed in this run, 3 from the cache), 12 s" in text
    assert "![adaptation demo](adaptation/figures/demo.png)" in text
    assert (tmp_path / "docs" / "adaptation" / "summary.tsv").read_text().splitlines()[1] == "demo\tresidual\t0.6123"
    assert "## similarity\n\nNot run." in text
