"""HTML of the explorer: overview (layers × heads coloured by a measure), unit pages, component pages.

Plain HTML + one stylesheet + inline script: every page opens from ``file://`` with no server, and
nothing is fetched from the network (the overview's data is embedded in the page, not loaded).
"""

from __future__ import annotations

import json
from html import escape

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em auto;max-width:1100px;color:#222;padding:0 1em}
a{color:#1456b8;text-decoration:none}a:hover{text-decoration:underline}
nav{margin-bottom:.8em;color:#666}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}
table{border-collapse:collapse}td,th{padding:2px 6px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.grid td{width:42px;height:30px;text-align:center;border:1px solid #fff;font-size:11px;padding:0}
table.grid td a{display:block;line-height:30px;color:inherit}
.note{background:#fff8e0;border:1px solid #eed78a;padding:.4em .7em;margin:.5em 0}
.strip{display:flex;flex-wrap:wrap;gap:6px}.strip figure{margin:0;text-align:center;font-size:11px}
.strip img{display:block;image-rendering:pixelated;border:1px solid #ddd}
.muted{color:#888}.legend{font-size:12px;color:#555}
"""

#: overview colour ramp (viridis stops), interpolated in the page
RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]

OVERVIEW_JS = """
const D = JSON.parse(document.getElementById('data').textContent);
const ramp = %s.map(h => [1,3,5].map(i => parseInt(h.slice(i, i + 2), 16)));
function colour(t) {
  if (!isFinite(t)) return 'rgb(235,235,235)';
  const x = Math.min(Math.max(t, 0), 1) * (ramp.length - 1), i = Math.min(Math.floor(x), ramp.length - 2), f = x - i;
  const c = ramp[i].map((v, j) => Math.round(v + f * (ramp[i + 1][j] - v)));
  return 'rgb(' + c.join(',') + ')';
}
function paint(name) {
  const vals = D.measures[name], finite = Object.values(vals).filter(isFinite);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  document.querySelectorAll('td[data-unit]').forEach(td => {
    const v = vals[td.dataset.unit], t = (hi > lo) ? (v - lo) / (hi - lo) : 0.5;
    td.style.background = colour(v === undefined ? NaN : t);
    td.style.color = (isFinite(t) && t > 0.6) ? '#000' : '#fff';
    td.title = td.dataset.unit + ': ' + (v === undefined ? 'n/a' : Number(v).toPrecision(4));
  });
  document.getElementById('range').textContent = finite.length ? name + ': ' + lo.toPrecision(3) + ' (dark) … ' + hi.toPrecision(3) + ' (light)' : '';
}
const sel = document.getElementById('measure');
sel.addEventListener('change', () => paint(sel.value));
paint(sel.value);
""" % json.dumps(RAMP)


def page(title: str, body: str, depth: int = 0) -> str:
    css = "../" * depth + "style.css"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<link rel=stylesheet href=\"{css}\"></head><body>{body}</body></html>\n")


def notes_html(notes: list[str]) -> str:
    return "".join(f"<p class=note>{escape(n)}</p>" for n in notes)


def overview(title: str, comp, measures: dict[str, dict[str, float]], default: str, linked: set[str],
             other_units: list[str], notes: list[str], summary: str) -> str:
    """index.html: the layers × heads grid (cells link to unit pages) and a measure picker."""
    opts = "".join(f"<option{' selected' if m == default else ''}>{escape(m)}</option>" for m in measures)
    head_row = "".join(f"<th>H{h}</th>" for h in range(comp.n_heads))
    rows = []
    for layer in range(comp.n_layers):
        cells = "".join(f"<td data-unit=L{layer}H{h}><a href=\"u/L{layer}H{h}.html\">{h}</a></td>"
                        if f"L{layer}H{h}" in linked else f"<td data-unit=L{layer}H{h}>{h}</td>" for h in range(comp.n_heads))
        rows.append(f"<tr><th>L{layer}</th>{cells}</tr>")
    others = " · ".join(f"<a href=\"u/{escape(u)}.html\">{escape(u)}</a>" for u in other_units)
    data = json.dumps({"measures": measures}).replace("</", "<\\/")
    body = (f"<h1>{escape(title)}</h1><p>{escape(summary)}</p>{notes_html(notes)}"
            f"<p>colour by <select id=measure>{opts}</select> <span id=range class=legend></span></p>"
            f"<table class=grid><tr><th></th>{head_row}</tr>{''.join(rows)}</table>"
            + (f"<h2>Other units</h2><p>{others}</p>" if others else "")
            + f"<script type=application/json id=data>{data}</script><script>{OVERVIEW_JS}</script>")
    return page(title, body)


def spectrum_svg(ratios: list[float], width: int = 520, height: int = 140) -> str:
    """Bars of the explained-variance ratios and their cumulative sum (a line), as inline SVG."""
    n = max(len(ratios), 1)
    bw = width / n
    top = max(max(ratios, default=0.0), 1e-12)
    bars = "".join(f"<rect x={i * bw:.1f} y={height - r / top * (height - 10):.1f} width={max(bw - 1, 1):.1f} "
                   f"height={r / top * (height - 10):.1f} fill=#3b528b><title>PC{i + 1}: {r:.3%}</title></rect>"
                   for i, r in enumerate(ratios))
    cum, pts = 0.0, []
    for i, r in enumerate(ratios):
        cum += r
        pts.append(f"{(i + 0.5) * bw:.1f},{height - cum * (height - 10):.1f}")
    line = f"<polyline points=\"{' '.join(pts)}\" fill=none stroke=#e55 stroke-width=1.5 />" if pts else ""
    return (f"<svg width={width} height={height} role=img aria-label=spectrum>{bars}{line}</svg>"
            f"<div class=legend>bars: explained-variance ratio per PC (scaled to the largest); red: cumulative (0–1)</div>")


def figure(src: str, caption: str, side: int) -> str:
    return f"<figure><img src=\"{escape(src)}\" width={side} height={side} alt=\"{escape(caption)}\"><figcaption>{escape(caption)}</figcaption></figure>"


def unit_page(label: str, measures: dict[str, float], ratios: list[float], descriptions: list[dict],
              pcs: list[dict], notes: list[str], side: int) -> str:
    """u/<label>.html: spectrum, measures, text descriptions, one row per PC with a preview and a link."""
    mrows = "".join(f"<tr><th>{escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in measures.items())
    drows = "".join(f"<tr><td>{escape(d['text'])}</td><td>{escape(d.get('detail', ''))}</td></tr>" for d in descriptions)
    parts = [f"<nav><a href=\"../index.html\">overview</a> › {escape(label)}</nav><h1>{escape(label)}</h1>",
             notes_html(notes), "<h2>Spectrum</h2>", spectrum_svg(ratios)]
    if mrows:
        parts.append(f"<h2>Measures</h2><table>{mrows}</table>")
    if drows:
        parts.append(f"<h2>Text descriptions</h2><table>{drows}</table>")
    parts.append("<h2>Principal components</h2>")
    for pc in pcs:
        lam = f" · λ = {pc['lambda']:.3g}" if pc.get("lambda") is not None else ""
        poles = "".join(f"<div><b>{escape(s)}</b> {escape(', '.join(t))}</div>" for s, t in pc.get("poles", {}).items())
        strip = "".join(figure("../" + src, f"{c:+.3g}", side) for src, c in pc["preview"])
        parts.append(f"<h3 id=pc{pc['k']}><a href=\"{escape(pc['href'])}\">PC{pc['k']}</a> "
                     f"<span class=muted>{pc['ratio']:.2%} of variance{lam}</span></h3>{poles}<div class=strip>{strip}</div>")
    return page(label, "".join(parts), depth=1)


def component_page(label: str, k: int, n_pcs: int, ratio: float, lam: float | None, poles: dict[str, list[str]],
                   top: list[tuple[str, float]], bottom: list[tuple[str, float]], overlays: bool, side: int,
                   pooled: bool = False) -> str:
    """u/<label>-pc<k>.html: the highest and lowest images of one PC with their coefficients (``pooled``:
    an attention-pooled tower, whose maps are over the tokens its probe reads)."""
    nav = [f"<a href=\"../index.html\">overview</a> › <a href=\"{escape(label)}.html\">{escape(label)}</a> › PC{k}"]
    if k > 1:
        nav.append(f"<a href=\"{escape(label)}-pc{k - 1}.html\">← PC{k - 1}</a>")
    if k < n_pcs:
        nav.append(f"<a href=\"{escape(label)}-pc{k + 1}.html\">PC{k + 1} →</a>")
    lam_txt = f" · λ = {lam:.3g} (the adapter's scale on this component)" if lam is not None else ""
    what = ("red/blue: where the head reads this component from (its exact spatial map along the PC, "
            "positive/negative)" if overlays else "images only: spatial maps exist for heads")
    if overlays and pooled:
        what = ("red/blue: at which tokens the attention probe reads this head's output along the PC (its exact "
                "spatial map over the pooled tokens, positive/negative)")
    pole_txt = "".join(f"<div><b>{escape(s)}</b> {escape(', '.join(t))}</div>" for s, t in poles.items())
    body = (f"<nav>{' · '.join(nav)}</nav><h1>{escape(label)} · PC{k}</h1>"
            f"<p>{ratio:.2%} of the unit's variance{lam_txt}. Coefficient: ⟨c − mean, v⟩. {escape(what)}.</p>{pole_txt}"
            f"<h2>Highest coefficients</h2><div class=strip id=top>{''.join(figure('../' + s, f'{c:+.4g}', side) for s, c in top)}</div>"
            f"<h2>Lowest coefficients</h2><div class=strip id=bottom>{''.join(figure('../' + s, f'{c:+.4g}', side) for s, c in bottom)}</div>")
    return page(f"{label} PC{k}", body, depth=1)
