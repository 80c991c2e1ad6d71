// Cohort explorer (kaapana-fhir). Talks only to the retrieval API beside this page (relative URLs).
// Safety: data never reaches innerHTML; text goes through textContent, links through safeUrl(), and plot
// labels through lab() (plotly renders a small HTML subset, so < > & are escaped there).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { project: "", cohort: "all", segment: "", filters: [], summary: null, offset: 0, limit: 100 };

  function lab(v) {
    return String(v === null || v === undefined ? "" : v).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function safeUrl(u) {
    try {
      const url = new URL(String(u), window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) { return null; }
  }
  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : String(Math.round(v * 1000) / 1000);
    return String(v);
  }
  function qs(extra) {
    const p = new URLSearchParams();
    if (state.project) p.append("project", state.project);
    if (state.segment) p.append("segment_label", state.segment);
    for (const f of state.filters) p.append("filter", f);
    for (const [k, v] of Object.entries(extra || {})) if (v !== "" && v !== null && v !== undefined) p.append(k, v);
    return p.toString();
  }
  function api(path, extra) { return "api/" + path + "?" + qs(extra); }
  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await r.json();
    if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
    return body;
  }
  function status(text) { $("status").textContent = text; }
  function fillSelect(sel, items, keep) {
    const old = keep ? sel.value : "";
    while (sel.options.length) sel.remove(0);
    for (const it of items) {
      const o = el("option", it.label !== undefined ? it.label : it.value);
      o.value = it.value;
      sel.appendChild(o);
    }
    if (old && items.some((i) => i.value === old)) sel.value = old;
  }
  function colLabel(c) { return c.unit ? c.name + " [" + c.unit + "]" : c.name; }

  async function init() {
    const [projects, cohorts] = await Promise.all([getJson("api/projects"), getJson("api/cohorts")]);
    fillSelect($("project"), projects.projects.map((p) => ({ value: p.name })));
    fillSelect($("cohort"), cohorts.cohorts.map((c) => ({ value: c.id, label: c.title || c.id })));
    const params = new URLSearchParams(window.location.search);
    if (params.get("project")) $("project").value = params.get("project");
    if (params.get("cohort")) $("cohort").value = params.get("cohort");
    state.project = $("project").value;
    state.cohort = $("cohort").value || "all";
    $("project").addEventListener("change", () => { state.project = $("project").value; refresh(); });
    $("cohort").addEventListener("change", () => { state.cohort = $("cohort").value; state.filters = []; refresh(); });
    $("segment").addEventListener("change", () => { state.segment = $("segment").value; refresh(); });
    $("reload").addEventListener("click", () => refresh());
    $("f-add").addEventListener("click", addFilter);
    $("k-send").addEventListener("click", sendToKaapana);
    $("f-col").addEventListener("change", showFilterHints);
    for (const id of ["km-time", "km-event", "km-group"]) $(id).addEventListener("change", drawKm);
    for (const id of ["sc-x", "sc-y"]) $(id).addEventListener("change", drawScatter);
    $("p-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); drawPatients(); });
    $("p-next").addEventListener("click", () => { state.offset += state.limit; drawPatients(); });
    await refresh();
  }

  function addFilter() {
    const col = $("f-col").value, op = $("f-op").value, val = $("f-val").value.trim();
    if (!col || val === "") return;
    state.filters.push(col + op + val);
    $("f-val").value = "";
    refresh();
  }

  async function sendToKaapana() {
    const out = $("k-result");
    out.textContent = "sending…";
    try {
      const url = api("cohorts/" + encodeURIComponent(state.cohort) + "/send-to-kaapana",
        { dataset_name: $("k-name").value.trim(), modality: $("k-mod").value.trim(), dag_id: $("k-dag").value.trim() });
      const r = await fetch(url, { method: "POST", credentials: "same-origin",
        headers: { Accept: "application/json", "X-Requested-By": "kaapana-fhir" } });
      const body = await r.json();
      if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
      out.textContent = "dataset " + body.dataset.name + " with " + body.series + " series created" +
        (body.workflow ? "; workflow " + (body.workflow.dag_id || "") + " started" : "");
    } catch (e) { out.textContent = "error: " + e.message; }
  }

  function showFilterHints() {
    const c = (state.summary ? state.summary.columns : []).find((x) => x.name === $("f-col").value);
    $("f-unit").textContent = c && c.unit ? "unit: " + c.unit : "";
    const dl = $("f-vals");
    while (dl.firstChild) dl.removeChild(dl.firstChild);
    for (const [v] of (c && c.categories) || []) { const o = el("option"); o.value = v; dl.appendChild(o); }
  }

  function drawFilters() {
    const box = $("filters");
    while (box.firstChild) box.removeChild(box.firstChild);
    state.filters.forEach((f, i) => {
      const chip = el("span", f, { class: "chip" });
      const x = el("button", "×", { type: "button", "aria-label": "remove filter" });
      x.addEventListener("click", () => { state.filters.splice(i, 1); refresh(); });
      chip.appendChild(x);
      box.appendChild(chip);
    });
  }

  function drawExports() {
    const cid = encodeURIComponent(state.cohort);
    $("exp-csv").href = api("cohorts/" + cid + "/rows", { format: "csv", limit: 100000 });
    $("exp-parquet").href = api("cohorts/" + cid + "/rows", { format: "parquet", limit: 100000 });
    $("exp-def").href = api("cohorts/" + cid);
  }

  async function refresh() {
    status("loading…");
    drawFilters();
    drawExports();
    state.offset = 0;
    try {
      const s = await getJson(api("cohorts/" + encodeURIComponent(state.cohort) + "/summary"));
      state.summary = s;
      fillSelect($("segment"), [{ value: "", label: "(all segments)" }].concat(s.segment_labels.map((l) => ({ value: l }))), true);
      $("segment").value = state.segment;
      const cols = s.columns;
      fillSelect($("f-col"), cols.map((c) => ({ value: c.name, label: colLabel(c) })), true);
      showFilterHints();
      const num = cols.filter((c) => c.kind === "numeric");
      const pat = cols.filter((c) => c.level === "patient");
      const timeCands = num.filter((c) => c.level === "patient" && c.group === "clinical");
      fillSelect($("km-time"), timeCands.map((c) => ({ value: c.name, label: colLabel(c) })), true);
      const surv = timeCands.find((c) => /surviv|^os/i.test(c.name));
      if (surv && !state.kmInit) { $("km-time").value = surv.name; }
      fillSelect($("km-event"), pat.map((c) => ({ value: c.name })), true);
      if (!state.kmInit && pat.some((c) => c.name === "deceased")) $("km-event").value = "deceased";
      fillSelect($("km-group"), [{ value: "", label: "(none)" }].concat(cols.filter((c) => c.name !== "segment_label").map((c) => ({ value: c.name, label: colLabel(c) }))), true);
      if (!state.kmInit) {
        const st = cols.find((c) => /stage/i.test(c.name) && c.kind === "categorical");
        if (st) $("km-group").value = st.name;
      }
      const feats = num.filter((c) => c.group === "feature");
      fillSelect($("sc-x"), feats.map((c) => ({ value: c.name, label: colLabel(c) })), true);
      fillSelect($("sc-y"), timeCands.map((c) => ({ value: c.name, label: colLabel(c) })), true);
      if (surv && !state.kmInit) $("sc-y").value = surv.name;
      state.kmInit = true;
      drawCards(s);
      drawStats(s);
      await Promise.all([drawKm(), drawScatter(), drawPatients(), drawSeries()]);
      status("built " + new Date(s.built_at * 1000).toLocaleTimeString() + " in " + s.build_seconds + " s");
    } catch (e) {
      status("error: " + e.message);
    }
  }

  function drawCards(s) {
    const box = $("cards");
    while (box.firstChild) box.removeChild(box.firstChild);
    const items = [["patients", s.patients], ["rows (patient × segment)", s.rows], ["patients in project", s.total_patients],
      ["modalities", s.modalities.join(", ") || "–"], ["segment labels", s.segment_labels.length]];
    for (const [l, n] of items) {
      const c = el("div", null, { class: "card" });
      c.appendChild(el("div", n, { class: "n" }));
      c.appendChild(el("div", l, { class: "l" }));
      box.appendChild(c);
    }
  }

  function drawStats(s) {
    const tb = $("stats").querySelector("tbody");
    while (tb.firstChild) tb.removeChild(tb.firstChild);
    for (const c of s.columns) {
      const tr = el("tr");
      let center = "", range = "";
      if (c.kind === "numeric" && c.n) {
        center = fmt(c.mean) + " ± " + fmt(c.sd);
        range = fmt(c.median) + " [" + fmt(c.min) + "–" + fmt(c.max) + "]";
      } else if (c.categories) {
        center = c.categories.slice(0, 4).map(([v, n]) => v + ": " + n).join("; ");
      }
      for (const v of [c.name, c.unit, c.level, c.n, c.missing, center, range]) tr.appendChild(el("td", v));
      tb.appendChild(tr);
    }
  }

  const layout = (x, y) => ({ margin: { l: 50, r: 10, t: 10, b: 44 }, xaxis: { title: { text: lab(x) } },
    yaxis: { title: { text: lab(y) } }, legend: { orientation: "h" }, paper_bgcolor: "#fff", plot_bgcolor: "#fafbfc" });

  async function drawKm() {
    const time = $("km-time").value;
    if (!time) { $("km-p").textContent = "–"; return; }
    try {
      const k = await getJson(api("cohorts/" + encodeURIComponent(state.cohort) + "/km",
        { time: time, event: $("km-event").value, group: $("km-group").value }));
      const traces = k.curves.map((c) => ({ x: c.times, y: c.survival, mode: "lines", line: { shape: "hv" },
        name: lab(c.group + " (n=" + c.n + ", events " + c.events + ")") }));
      Plotly.react("km-plot", traces, Object.assign(layout(time + (k.unit ? " [" + k.unit + "]" : ""), "survival"),
        { yaxis: { range: [0, 1.02], title: { text: "survival" } } }), { displaylogo: false, responsive: true });
      $("km-p").textContent = k.logrank ? Number(k.logrank.p_value).toPrecision(3) : "n/a";
      $("km-n").textContent = "n = " + k.n + ", missing " + k.missing + (k.logrank ? ", χ² = " + fmt(k.logrank.statistic) + " (df " + k.logrank.df + ")" : "");
    } catch (e) { $("km-p").textContent = "error: " + e.message; }
  }

  async function drawScatter() {
    const x = $("sc-x").value, y = $("sc-y").value;
    if (!x || !y) { $("sc-r").textContent = "–"; return; }
    try {
      const d = await getJson(api("cohorts/" + encodeURIComponent(state.cohort) + "/scatter", { x: x, y: y }));
      const text = d.patient_id.map((p, i) => lab(p + (d.segment_label[i] ? " · " + d.segment_label[i] : "")));
      Plotly.react("sc-plot", [{ x: d.x, y: d.y, text: text, mode: "markers", type: "scatter", hoverinfo: "x+y+text" }],
        layout(x + (d.x_unit ? " [" + d.x_unit + "]" : ""), y + (d.y_unit ? " [" + d.y_unit + "]" : "")),
        { displaylogo: false, responsive: true });
      $("sc-r").textContent = d.spearman_r === null ? "n/a" : fmt(d.spearman_r);
      $("sc-n").textContent = "n = " + d.n + ", missing " + d.missing;
    } catch (e) { $("sc-r").textContent = "error: " + e.message; }
  }

  async function drawPatients() {
    const d = await getJson(api("cohorts/" + encodeURIComponent(state.cohort) + "/rows", { offset: state.offset, limit: state.limit }));
    const t = $("patients"), thead = t.querySelector("thead"), tb = t.querySelector("tbody");
    while (thead.firstChild) thead.removeChild(thead.firstChild);
    while (tb.firstChild) tb.removeChild(tb.firstChild);
    const cols = d.columns.filter((c) => c !== "patient_key" && c !== "segment_key" && c !== "identifier_system");
    const hr = el("tr");
    hr.appendChild(el("th", "FHIR"));
    for (const c of cols) hr.appendChild(el("th", c));
    thead.appendChild(hr);
    const fhir = state.summary ? state.summary.links.fhir : "";
    for (const r of d.rows) {
      const tr = el("tr");
      const td = el("td");
      const u = safeUrl(fhir + "/Patient/" + encodeURIComponent(r.patient_key));
      if (u) { const a = el("a", "Patient", { href: u, target: "_blank", rel: "noopener", class: "fhir-link" }); td.appendChild(a); }
      tr.appendChild(td);
      for (const c of cols) tr.appendChild(el("td", fmt(r[c])));
      tb.appendChild(tr);
    }
    $("p-info").textContent = d.total ? (d.offset + 1) + "–" + Math.min(d.offset + d.limit, d.total) + " of " + d.total : "no rows";
    $("p-prev").disabled = d.offset === 0;
    $("p-next").disabled = d.next_offset === null;
  }

  async function drawSeries() {
    const d = await getJson(api("cohorts/" + encodeURIComponent(state.cohort) + "/series", { limit: 500 }));
    const tb = $("series").querySelector("tbody");
    while (tb.firstChild) tb.removeChild(tb.firstChild);
    for (const r of d.rows) {
      const tr = el("tr");
      for (const c of ["patient_id", "modality", "series_description", "series_uid"]) tr.appendChild(el("td", r[c]));
      const td = el("td");
      for (const [label, key, cls] of [["OHIF", "ohif_url", "ohif-link"], ["DICOMweb", "dicomweb_url", "dicomweb-link"],
        ["ImagingStudy", "fhir_imaging_study_url", "fhir-link"], ["Patient", "fhir_patient_url", "fhir-link"]]) {
        const u = safeUrl(r[key]);
        if (u) td.appendChild(el("a", label, { href: u, target: "_blank", rel: "noopener", class: cls }));
      }
      tr.appendChild(td);
      tb.appendChild(tr);
    }
  }

  init().catch((e) => status("error: " + e.message));
})();
