"""Self-contained HTML cohort dashboard (plotly; one file, plotly.js inlined once, no network fetches).

Safety: every text that comes from data (identifiers, variable names, histology strings, descriptions)
is HTML-escaped before it reaches the page, both in the HTML and in plot labels (plotly renders a small
HTML subset in labels; escaped text is shown literally). Figure JSON sits in ``<script
type="application/json">`` blocks with ``<``, ``>`` and ``&`` written as ``\\u003c`` etc., so no data can
close the script element. Sections without data say so instead of failing.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from kaapana_fhir.core.cohort import report_data as RD

_COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00", "#b82e2e",
           "#316395", "#994499", "#22aa99"]
_STATE_COLORS = {"present": "#2e7d32", "unmapped": "#f9a825", "absent": "#c62828"}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}nav{margin-top:10px}nav a{color:#cfe0ff;margin-right:16px;
font-size:13px;text-decoration:none}main{padding:16px 28px;max-width:1400px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.1);margin:0 0 18px;padding:14px 18px}
h2{font-size:17px;margin:2px 0 10px;color:#1f3a5f}h3{font-size:14px;margin:0 0 4px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{flex:1 1 130px;background:#eef3f9;border-radius:6px;padding:10px 14px}
.card .n{font-size:26px;font-weight:600;color:#1f3a5f}.card .l{font-size:12px;color:#4a5a6a}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.cell{border:1px solid #e3e8ee;border-radius:6px;padding:8px 10px}.muted{color:#6b7885;font-size:12px}
.nodata{color:#6b7885;font-style:italic;padding:8px 0}.plot{width:100%}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{text-align:left;padding:3px 6px;
border-bottom:1px solid #eceff3;vertical-align:top}th{color:#4a5a6a;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bar{display:inline-block;height:10px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:14px}@media(max-width:1000px){.two{grid-template-columns:1fr}}
"""


def esc(value: Any) -> str:
    """Text for HTML."""
    return html.escape("" if value is None else str(value), quote=True)


def lab(value: Any) -> str:
    """Text for plotly labels: plotly renders a small HTML subset and decodes &lt; &gt; &amp; (not &quot;),
    so ``<``, ``>`` and ``&`` are escaped and the text is shown literally."""
    return html.escape("" if value is None else str(value), quote=False)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return ""
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


class _Page:
    def __init__(self) -> None:
        self.figs: list[str] = []

    def plot(self, fig: go.Figure, height: int = 260) -> str:
        fig.update_layout(height=height, margin={"l": 48, "r": 12, "t": 28, "b": 40}, template=None,
                          paper_bgcolor="#ffffff", plot_bgcolor="#fafbfc", font={"size": 11},
                          showlegend=fig.layout.showlegend if fig.layout.showlegend is not None else False)
        fig.update_xaxes(gridcolor="#e6e9ee", automargin=True)
        fig.update_yaxes(gridcolor="#e6e9ee", automargin=True)
        spec = fig.to_json()
        spec = spec.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        i = len(self.figs)
        self.figs.append(f'<script type="application/json" id="fig-{i}">{spec}</script>')
        bar = "1" if height >= 300 else "0"
        return f'<div class="plot" data-fig="fig-{i}" data-modebar="{bar}" style="height:{height}px"></div>'


def _nodata(text: str) -> str:
    return f'<p class="nodata">No data: {esc(text)}</p>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def _counts_section(page: _Page, d: RD.ReportData) -> str:
    c = RD.counts(d)
    cards = [("patients", "Patients"), ("studies", "Imaging studies"), ("series", "Series"), ("segments", "Segments"),
             ("features", "Radiomics features"), ("clinical_variables", "Clinical variables")]
    html_cards = "".join(f'<div class="card"><div class="n">{c[k]:,}</div><div class="l">{esc(label)}</div></div>'
                         for k, label in cards)
    mods = c["series_by_modality"]
    if mods:
        fig = go.Figure(go.Bar(x=[lab(k) for k in mods], y=list(mods.values()), marker_color="#3366cc",
                               text=list(mods.values()), textposition="auto"))
        fig.update_layout(title={"text": "Series by modality", "font": {"size": 13}})
        mod_html = page.plot(fig, 230)
    else:
        mod_html = _nodata("no ImagingStudy series in this cohort")
    seg_html = _nodata("no segments (radiomics) in this cohort")
    rl = d.radiomics_long
    if not rl.empty and "segment_label" in rl and rl["segment_label"].notna().any():
        seg = rl.drop_duplicates("segment_key")["segment_label"].fillna("(no label)").value_counts().head(15)
        fig = go.Figure(go.Bar(x=[lab(k) for k in seg.index], y=seg.values.tolist(), marker_color="#109618",
                               text=seg.values.tolist(), textposition="auto"))
        fig.update_layout(title={"text": "Segments by label (SegmentLabel)", "font": {"size": 13}})
        seg_html = page.plot(fig, 230)
    return _section("counts", "Cohort counts", f'<div class="cards">{html_cards}</div>'
                    f'<div class="two" style="margin-top:12px"><div>{mod_html}</div><div>{seg_html}</div></div>')


def _variable_cell(page: _Page, name: str, s: pd.Series, label: str | None = None, unit: str | None = None) -> str:
    n = len(s)
    missing = int(s.isna().sum())
    miss = f'{n - missing:,} of {n:,} patients ({(missing / n * 100 if n else 0):.0f}% missing)'
    title = label if label and label != name else name
    extra = (f" · column {name}" if title != name else "") + (f" · unit {unit}" if unit else "")
    head = f'<h3>{esc(title)}</h3><div class="muted">{esc(miss + extra)}</div>'
    if n - missing == 0:
        return f'<div class="cell">{head}{_nodata("all values missing")}</div>'
    if RD.is_numeric(s):
        st = RD.summary(s)
        fig = go.Figure(go.Histogram(x=pd.to_numeric(s, errors="coerce").dropna().tolist(), marker_color="#3366cc",
                                     nbinsx=20))
        stats = "".join(f"<th>{k}</th>" for k in ("mean", "sd", "min", "median", "max"))
        vals = "".join(f'<td class="num">{_fmt(st.get(k))}</td>' for k in ("mean", "sd", "min", "median", "max"))
        return f'<div class="cell">{head}{page.plot(fig, 200)}<table><tr>{stats}</tr><tr>{vals}</tr></table></div>'
    cats = RD.categories(s)
    fig = go.Figure(go.Bar(x=[c for _, c in cats], y=[lab(k) for k, _ in cats], orientation="h",
                           marker_color=["#b0b8c2" if k == "(missing)" else "#0099c6" for k, _ in cats],
                           text=[c for _, c in cats], textposition="auto"))
    fig.update_yaxes(autorange="reversed", type="category")
    return f'<div class="cell">{head}{page.plot(fig, max(160, 40 + 22 * len(cats)))}</div>'


def _clinical_section(page: _Page, d: RD.ReportData) -> str:
    p = d.patients
    variables = [v for v in d.clinical_variables if v in p]
    demo = [c for c in ("gender",) if c in p and p[c].notna().any()]
    if p.empty or not (variables or demo):
        return _section("clinical", "Clinical variables", _nodata("no patients with clinical data"))
    note = ('<p class="muted">One value per patient and variable (the latest, by effective date). '
            'Numeric: histogram and summary; categorical: counts, grey = missing.</p>')
    if not variables:
        note = _nodata("no clinical variables (Observations / Conditions) for these patients; Patient data only")
    cells = "".join(_variable_cell(page, v, p[v], d.labels.get(v), d.units.get(v)) for v in demo + variables)
    return _section("clinical", "Clinical variables", f'{note}<div class="grid">{cells}</div>')


def _dropdown(fig: go.Figure, labels: list[str], traces_per: int) -> None:
    n = len(labels) * traces_per
    buttons = []
    for i, name in enumerate(labels):
        vis = [i * traces_per <= j < (i + 1) * traces_per for j in range(n)]
        buttons.append({"label": lab(name), "method": "update", "args": [{"visible": vis}]})
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.16, "yanchor": "top",
                                    "direction": "down", "showactive": True}])


def _radiomics_section(page: _Page, d: RD.ReportData, group_by: str | None, max_features: int) -> str:
    rl = d.radiomics_long
    if rl.empty:
        return _section("radiomics", "Radiomics features", _nodata("no radiomics feature Observations"))
    feats = RD.top_features(d, max_features)
    mat = RD.feature_matrix(d, feats)
    p = d.patients.set_index("patient_key") if "patient_key" in d.patients else pd.DataFrame()
    intro = (f'<p class="muted">{len(RD.top_features(d, 10**6)):,} features; the {len(feats)} with the highest '
             'relative spread are shown (choose one in the menu of each plot).</p>')
    parts = [intro]
    gv = RD.group_variable(d, group_by)
    pk = mat.index.get_level_values("patient_key")
    if gv and not p.empty:
        groups = pk.map(lambda k: p[gv].get(k) if k in p.index else None)
        glabels = [lab("(missing)" if g is None or (isinstance(g, float) and pd.isna(g)) else g) for g in groups]
        fig = go.Figure()
        for i, f in enumerate(feats):
            fig.add_trace(go.Box(x=glabels, y=mat[f].tolist(), name=lab(f), visible=i == 0, boxpoints="outliers",
                                 marker_color="#3366cc"))
        _dropdown(fig, feats, 1)
        order = sorted(set(glabels), key=lambda g: (g == lab("(missing)"), g))
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title={"text": lab(gv)})
        box = f'<h3>Feature by {esc(gv)}</h3>{page.plot(fig, 340)}'
    else:
        box = "<h3>Feature by clinical group</h3>" + _nodata("no categorical clinical variable to group by")
    sv = RD.survival_variable(d)
    if sv and not p.empty:
        t = pk.map(lambda k: p[sv].get(k) if k in p.index else None)
        ev = pk.map(lambda k: bool(p["deceased"].get(k)) if "deceased" in p and k in p.index else False)
        ids = pk.map(lambda k: lab(p["patient_id"].get(k)) if "patient_id" in p and k in p.index else lab(k))
        fig = go.Figure()
        for i, f in enumerate(feats):
            for flag, name, color in ((True, "event (deceased)", "#dc3912"), (False, "censored", "#3366cc")):
                m = [e == flag for e in ev]
                fig.add_trace(go.Scatter(x=[v for v, k in zip(mat[f], m, strict=True) if k],
                                         y=[v for v, k in zip(t, m, strict=True) if k],
                                         mode="markers", name=name, marker={"color": color, "size": 6, "opacity": .7},
                                         text=[v for v, k in zip(ids, m, strict=True) if k], visible=i == 0,
                                         hovertemplate="%{text}<br>feature %{x}<br>" + lab(sv)
                                         + " %{y}<extra></extra>"))
        _dropdown(fig, feats, 2)
        fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
        fig.update_yaxes(title={"text": lab(sv)})
        surv = f'<h3>Feature vs {esc(sv)}</h3>{page.plot(fig, 340)}'
    else:
        surv = "<h3>Feature vs survival</h3>" + _nodata("no numeric survival variable (e.g. Survival.time)")
    parts.append(f'<div class="two"><div>{box}</div><div>{surv}</div></div>')
    corr_feats = feats[:25]
    cm = mat[corr_feats].copy() if len(corr_feats) else pd.DataFrame()
    if not cm.empty and not p.empty:
        for v in d.clinical_variables:
            if v in p and RD.is_numeric(p[v]):
                cm[v] = [p[v].get(k) if k in p.index else None for k in pk]
    if cm.shape[1] >= 2 and len(cm) >= 3:
        corr = cm.astype(float).corr(method="spearman")
        labels = [lab(c) for c in corr.columns]
        z = [[None if pd.isna(x) else round(float(x), 3) for x in row] for row in corr.values]
        fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                                   hovertemplate="%{x} / %{y}: %{z}<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
        parts.append(f'<h3>Spearman correlation (features and numeric clinical variables)</h3>'
                     f'{page.plot(fig, min(820, 260 + 18 * len(labels)))}')
    else:
        parts.append("<h3>Correlation</h3>" + _nodata("fewer than 3 segments or 2 variables"))
    return _section("radiomics", "Radiomics features", "".join(parts))


def _completeness_section(page: _Page, d: RD.ReportData) -> str:
    rows = RD.completeness(d)
    if not rows or all(r["total"] == 0 for r in rows):
        return _section("dicom", "DICOM data completeness", _nodata("no ImagingStudy / Patient data"))
    labels = [lab(f"{r['attribute']} {r['tag']}") for r in rows]
    fig = go.Figure()
    for state in ("present", "unmapped", "absent"):
        share = [(r[state] / r["total"] * 100 if r["total"] else 0) for r in rows]
        fig.add_trace(go.Bar(y=labels, x=share, orientation="h", name=state, marker_color=_STATE_COLORS[state],
                             customdata=[r[state] for r in rows], textposition="inside", insidetextanchor="middle",
                             text=[f"{v:.0f}%" if v >= 6 else "" for v in share], textfont={"color": "#ffffff"},
                             hovertemplate="%{y}: %{x:.0f}% (%{customdata})<extra>" + state + "</extra>"))
    fig.update_layout(barmode="stack", showlegend=True, legend={"orientation": "h", "y": -0.15, "traceorder": "normal"})
    fig.update_xaxes(range=[0, 100], ticksuffix="%")
    fig.update_yaxes(autorange="reversed")
    trs = []
    for r in rows:
        vals = ", ".join(f"{esc(v)} ({c})" for v, c in r["values"]) or '<span class="muted">none</span>'
        def pct(k: str, r: dict[str, Any] = r) -> str:
            return f"{r[k] / r['total'] * 100:.0f}%" if r["total"] else ""

        trs.append(f"<tr><td>{esc(r['attribute'])} <span class='muted'>{esc(r['tag'])}</span></td><td>{esc(r['unit'])}"
                   f"</td><td class='num'>{r['total']}</td><td class='num'>{pct('present')}</td>"
                   f"<td class='num'>{pct('unmapped')}</td><td class='num'>{pct('absent')}</td><td>{vals}</td></tr>")
    table = ("<table><tr><th>attribute</th><th>per</th><th>n</th><th>present</th><th>unmapped</th><th>absent</th>"
             f"<th>values seen (count)</th></tr>{''.join(trs)}</table>")
    note = ('<p class="muted">present = mapped (coded where FHIR has a code); unmapped = a value exists but could not '
            'be coded (e.g. free-text body part, time without UTC offset, sex "unknown"); absent = not in the data. '
            'Image series exclude SEG/RTSTRUCT/SR.</p>')
    return _section("dicom", "DICOM data completeness", note + page.plot(fig, 80 + 30 * len(rows)) + table)


def render(d: RD.ReportData, *, group_by: str | None = None, max_features: int = 40) -> str:
    """The dashboard as one HTML string."""
    page = _Page()
    sections = [_counts_section(page, d), _clinical_section(page, d),
                _radiomics_section(page, d, group_by, max_features), _completeness_section(page, d)]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (("counts", "Counts"), ("clinical", "Clinical"),
                                                          ("radiomics", "Radiomics"), ("dicom", "DICOM completeness")))
    src = f" · source: {esc(d.source)}" if d.source else ""
    boot = ("(function(){document.querySelectorAll('div.plot[data-fig]').forEach(function(el){"
            "var s=JSON.parse(document.getElementById(el.getAttribute('data-fig')).textContent);"
            "var cfg={displaylogo:false,responsive:true,displayModeBar:el.getAttribute('data-modebar')==='1'};"
            "Plotly.newPlot(el,s.data,s.layout,cfg);});})();")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' "
            "'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; font-src data:\">"
            f"<title>{esc(d.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{esc(d.title)}</h1><p>Generated {now}{src} by kaapana-fhir</p><nav>{nav}</nav></header>"
            f"<main>{''.join(sections)}</main>"
            f"<script>{get_plotlyjs()}</script>{''.join(page.figs)}<script>{boot}</script></body></html>")


def render_cohort(cohort: Any, **kw: Any) -> str:
    title = kw.pop("title", "Cohort overview")
    source = kw.pop("source", "")
    return render(RD.from_cohort(cohort, title=title, source=source), **kw)
