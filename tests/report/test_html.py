"""The generic report writer: both files written, tables in both, every <img> exists and decodes."""

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resi_dual.errors import ResiDualError
from resi_dual.report.html import Report


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 20, 3), value, dtype=np.uint8)).save(path)
    return path


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_report_writes_html_and_markdown(tmp_path):
    outside = _png(tmp_path / "plots" / "spectra.png", 10)
    clash = _png(tmp_path / "other" / "spectra.png", 200)  # same file name, different figure
    out = tmp_path / "report"
    inside = _png(out / "heat" / "id.png", 90)  # already inside the output folder: linked in place
    df = pd.DataFrame({"method": ["residual", "linear <probe>"], "accuracy": [0.61234, 0.84], "params": [1152, 147840]})
    r = Report("Demo & results", subtitle="made by `resi-dual demo --out X`")
    r.section("Accuracy", "Top-1 on the test split.\n\nSecond paragraph with `code`.")
    r.table(df, caption="accuracy vs parameters")
    r.section("Figures")
    r.figure(outside, "explained variance")
    r.figure(clash, "another spectrum")
    r.figure(inside, "ID heatmap")
    r.section("Rows")
    r.table([{"unit": "L0H1", "id": 3}, {"unit": "L5H2", "id": 7, "note": "top"}])
    index = r.write(out)

    assert index == out / "index.html" and (out / "results.md").is_file()
    text = index.read_text()
    parser = _Imgs()
    parser.feed(text)
    assert len(parser.srcs) == 3 and len(set(parser.srcs)) == 3
    assert "heat/id.png" in parser.srcs
    for src in parser.srcs:
        assert not src.startswith("/") and ".." not in src
        with Image.open(out / src) as im:
            im.load()
            assert im.size == (20, 12)
    # the two same-named figures are kept apart
    vals = sorted(int(np.asarray(Image.open(out / s))[0, 0, 0]) for s in parser.srcs)
    assert vals == [10, 90, 200]
    assert "<script" not in text and "linear &lt;probe&gt;" in text and "Demo &amp; results" in text
    assert "<code>resi-dual demo --out X</code>" in text
    assert "0.6123" in text and "147840" in text and text.count("<table>") == 2
    assert 'id="s0"' in text  # table of contents anchors with 3 sections

    md = (out / "results.md").read_text()
    assert md.startswith("# Demo & results")
    assert "| method | accuracy | params |" in md and "| residual | 0.6123 | 1152 |" in md
    assert "| unit | id | note |" in md and "| L5H2 | 7 | top |" in md and "| L0H1 | 3 |  |" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(parser.srcs)


def test_report_rejects_missing_or_non_png_figures(tmp_path):
    with pytest.raises(ResiDualError, match="does not exist"):
        Report("x").figure(tmp_path / "nope.png").write(tmp_path / "o1")
    jpg = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4)).save(jpg)
    with pytest.raises(ResiDualError, match="not a PNG"):
        Report("x").figure(jpg).write(tmp_path / "o2")
    with pytest.raises(ResiDualError, match="needs a DataFrame"):
        Report("x").table(42)
