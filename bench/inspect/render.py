"""One self-contained HTML page per cell: inline CSS, SVG and a few lines of JS, no network.

Every piece of text that came from data (tokens, names, paths) goes through ``html.escape``.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable

from bench.inspect.lens import TokenScores
from bench.inspect.stats import Context, UnitStats


@dataclass
class UnitPanel:
    stats: UnitStats
    tokens: TokenScores | None  # None: no output direction to read (``lens_note`` says why)
    lens_note: str = ""


@dataclass
class DashboardPage:
    title: str
    meta: dict[str, str]
    units: list[UnitPanel]
    notes: list[str] = field(default_factory=list)  # "how to read this page", shown once at the top


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 2rem 3rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4rem;margin:1.2rem 0 .3rem}h2{font-size:1.15rem;margin:0 0 .4rem}
h3{font-size:.95rem;margin:.6rem 0 .3rem}
.meta{color:#555;margin:.2rem 0}.meta b{color:#1d1d1f}
table.summary{border-collapse:collapse;margin:.8rem 0}table.summary td,table.summary th{padding:.2rem .6rem;
border-bottom:1px solid #ddd;text-align:left}
section.unit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.panels{display:flex;gap:2rem;flex-wrap:wrap}.panel{min-width:300px}
svg.histogram rect.bar{fill:#4a7bd0}svg.histogram text{font-size:10px;fill:#555}
ol.contexts{padding-left:1.5rem}ol.contexts li{margin:.15rem 0}
.act{display:inline-block;min-width:4.5rem;color:#555;font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,monospace;white-space:pre}
.tok{border-radius:2px;margin:0 1px;unicode-bidi:isolate}.tok.fire{outline:2px solid #d04a4a;font-weight:600}
.lists{display:flex;gap:2.5rem}ol.lens{padding-left:1.8rem;margin:0}
.tokname{font-family:ui-monospace,monospace;white-space:pre;unicode-bidi:isolate}
.na{color:#777;font-style:italic}#filter{margin:.5rem 0;padding:.2rem .4rem}
"""

_JS = """
document.getElementById('filter').addEventListener('input', function (event) {
  var wanted = event.target.value.split(',').map(function (s) { return s.trim(); }).filter(Boolean);
  document.querySelectorAll('section.unit').forEach(function (section) {
    var show = wanted.length === 0 || wanted.indexOf(section.dataset.unit) >= 0;
    section.style.display = show ? '' : 'none';
  });
});
"""


def render_page(page: DashboardPage, token_text: Callable[[int], str]) -> str:
    e = html.escape
    meta = "".join(f'<p class="meta"><b>{e(k)}</b>: {e(v)}</p>' for k, v in page.meta.items())
    notes = "".join(f"<li>{e(n)}</li>" for n in page.notes)
    notes = f'<details class="meta"><summary>How to read this page</summary><ul>{notes}</ul></details>' if notes else ""
    rows = "".join(_summary_row(p) for p in page.units)
    sections = "".join(_unit_section(p, token_text) for p in page.units)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(page.title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{e(page.title)}</h1>{meta}{notes}'
            '<label>Show units <input id="filter" placeholder="e.g. 12, 40 (empty: all)"></label>'
            '<table class="summary"><thead><tr><th>unit</th><th>fires on</th><th>max</th><th>mean when firing</th>'
            f'<th>top promoted tokens</th></tr></thead><tbody>{rows}</tbody></table>{sections}'
            f'<script>{_JS}</script></body></html>\n')


def _summary_row(panel: UnitPanel) -> str:
    s = panel.stats
    promoted = (" \u00b7 ".join(f'<span class="tokname">{_token_name(t)}</span>' for t, _ in panel.tokens.promoted[:5])
                if panel.tokens else "n/a")
    return (f'<tr><td><a href="#unit-{s.unit}">{s.unit}</a></td><td>{_percent(s.frequency)}</td>'
            f'<td>{s.max_activation:.3g}</td><td>{s.mean_activation:.3g}</td><td class="ctx">{promoted}</td></tr>')


def _unit_section(panel: UnitPanel, token_text: Callable[[int], str]) -> str:
    s = panel.stats
    contexts = "".join(_context_item(c, s.max_activation, token_text) for c in s.top_contexts)
    contexts = f'<ol class="contexts">{contexts}</ol>' if contexts else '<p class="na">never fired on these tokens</p>'
    return (f'<section class="unit" id="unit-{s.unit}" data-unit="{s.unit}"><h2>Unit {s.unit}</h2>'
            f'<p class="freq">fires on {s.n_fired:,} of {s.n_scored:,} scored tokens '
            f'(<span class="frequency">{_percent(s.frequency)}</span>)</p><div class="panels">'
            f'<div class="panel"><h3>Activation histogram (tokens where it fires)</h3>{_histogram(s)}</div>'
            f'<div class="panel"><h3>Output direction through the unembedding</h3>'
            f'{_lens(panel)}</div></div>'
            f'<h3>Top-activating contexts</h3>{contexts}</section>')


def _context_item(context: Context, unit_max: float, token_text: Callable[[int], str]) -> str:
    spans = []
    for i, (token, act) in enumerate(zip(context.token_ids, context.activations)):
        alpha = min(1.0, max(0.0, act / unit_max)) if unit_max > 0 else 0.0
        style = f' style="background:rgba(240,140,40,{alpha:.2f})"' if alpha > 0 else ""
        cls = "tok fire" if i == context.focus else "tok"
        spans.append(f'<span class="{cls}" title="{act:.4g}"{style}>{_token_name(token_text(token))}</span>')
    return (f'<li data-row="{context.row}" data-position="{context.position}"><span class="act">'
            f'{context.activation:.4g}</span><span class="ctx">{"".join(spans)}</span></li>')


def _histogram(stats: UnitStats, width: int = 320, height: int = 110) -> str:
    if not any(stats.histogram):
        return '<p class="na">no non-zero codes</p>'
    top, n = max(stats.histogram), len(stats.histogram)
    top_margin, bar_w = 14, width / n
    plot_h = height - 16 - top_margin
    bars = []
    for i, count in enumerate(stats.histogram):
        h = plot_h * count / top
        lo, hi = stats.bin_edges[i], stats.bin_edges[i + 1]
        bars.append(f'<rect class="bar" x="{i * bar_w:.1f}" y="{top_margin + plot_h - h:.1f}" '
                    f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}">'
                    f'<title>{lo:.3g} to {hi:.3g}: {count:,} token(s)</title></rect>')
    return (f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="activation histogram">{"".join(bars)}'
            f'<text x="0" y="{height - 2}">0</text><text x="{width}" y="{height - 2}" text-anchor="end">'
            f'{stats.bin_edges[-1]:.3g}</text><text x="{width}" y="10" text-anchor="end">max bin {top:,}</text></svg>')


def _lens(panel: UnitPanel) -> str:
    e = html.escape
    if panel.tokens is None:
        return f'<p class="na">n/a: {e(panel.lens_note)}</p>'
    if not panel.tokens.promoted:
        return '<p class="na">n/a: the unit never fired, so it wrote nothing to read</p>'
    promoted = "".join(_scored_token(t, s) for t, s in panel.tokens.promoted)
    suppressed = "".join(_scored_token(t, s) for t, s in panel.tokens.suppressed)
    return (f'<div class="lists"><div><b>promoted</b><ol class="lens promoted">{promoted}</ol></div>'
            f'<div><b>suppressed</b><ol class="lens suppressed">{suppressed}</ol></div></div>')


def _scored_token(text: str, score: float) -> str:
    return f'<li><span class="tokname">{_token_name(text)}</span> {score:+.2f}</li>'


def _token_name(text: str) -> str:
    """A token as shown: newlines and tabs made visible, then escaped."""
    return html.escape(text.replace("\n", "\u23ce").replace("\t", "\u21e5"))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"
