// Mapping editor (kaapana-fhir). Talks only to the API beside this page (../api/mapping/...).
// The YAML text is the source of truth: every form change is sent as an edit (set / delete at a key path) and the
// server returns the new text with its validation and preview. Safety: data never reaches HTML parsing; every
// text from the table or the mapping goes through textContent or an input's value.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const API = "../api/mapping/";
  const VALUE_TYPES = ["Quantity", "decimal", "integer", "boolean", "string", "CodeableConcept", "dateTime"];
  const state = { project: "", key: "", yaml: "", mapping: null, etag: "", mappingKey: "", profile: {},
    catalogue: {}, queue: Promise.resolve(), rev: 0 };

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function isTodo(v) { return typeof v === "string" && ["TODO", "FIXME", "TBD"].includes(v.trim().toUpperCase()); }
  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "muted error" : "muted";
  }
  function query(extra) {
    const p = new URLSearchParams();
    if (state.project) p.append("project", state.project);
    for (const [k, v] of Object.entries(extra || {})) if (v !== "" && v !== null && v !== undefined) p.append(k, v);
    return p.toString();
  }
  async function call(method, name, extra, body, contentType) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["X-Requested-By"] = "kaapana-fhir";
      headers["Content-Type"] = contentType || "application/json";
    }
    const r = await fetch(API + name + "?" + query(extra), { method: method, credentials: "same-origin", headers: headers,
      body: body === undefined ? undefined : body });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error(data && data.error ? data.error : "HTTP " + r.status);
      err.data = data;
      err.status = r.status;
      throw err;
    }
    return data;
  }
  // requests run one after another, so a slow answer can never overwrite a newer text
  function serial(fn) {
    state.queue = state.queue.then(fn).catch((e) => status("error: " + e.message, true));
    return state.queue;
  }
  function bump() { state.rev += 1; $("status").dataset.rev = String(state.rev); }

  // ------------------------------------------------------------------ tables
  async function loadTables(select) {
    const t = await call("GET", "tables");
    const sel = $("table");
    while (sel.options.length > 1) sel.remove(1);
    for (const it of t.tables) {
      const o = el("option", it.key + (it.mapping_key ? "  (mapping saved)" : ""));
      o.value = it.key;
      sel.appendChild(o);
    }
    if (select) sel.value = select;
    $("where").textContent = "Bucket " + t.bucket + ", folder " + t.prefix + " (" + t.tables.length + " table(s))";
  }
  async function openTable(key) {
    if (!key) { status("choose a table first", true); return; }
    status("profiling " + key + " …");
    const d = await call("GET", "draft", { key: key, local_codes: $("local-codes").checked ? "1" : "" });
    state.key = key;
    state.etag = d.mapping_etag || "";
    state.mappingKey = d.mapping_key;
    state.profile = {};
    for (const c of d.profile.columns) state.profile[c.column] = c;
    drawProfile(d.profile);
    render(d);
    status((d.source === "saved" ? "loaded the saved mapping " : "generated a mapping for ") + key);
  }
  async function upload() {
    const f = $("file").files[0];
    if (!f) { status("choose a file to upload", true); return; }
    status("uploading " + f.name + " …");
    const r = await call("POST", "upload", { name: f.name, replace: $("replace").checked ? "true" : "" }, f,
      "application/octet-stream");
    await loadTables(r.key);
    await openTable(r.key);
  }

  // ------------------------------------------------------------------ edits
  function edit(edits) {
    return serial(async () => {
      if (!state.key) return;
      status("checking …");
      const r = await call("POST", "preview", { key: state.key }, JSON.stringify({ yaml: state.yaml, edits: edits }));
      render(r);
      status("checked " + state.key);
    });
  }
  function setAt(path, value) { return edit([{ op: "set", path: path, value: value }]); }
  function delAt(path) { return edit([{ op: "delete", path: path }]); }

  function input(value, path, opts) {
    const i = el("input");
    i.value = value === null || value === undefined ? "" : String(value);
    if (isTodo(i.value)) i.className = "todo";
    if (opts && opts.wide) i.classList.add("wide");
    if (opts && opts.list) i.setAttribute("list", opts.list);
    if (opts && opts.label) i.setAttribute("aria-label", opts.label);
    if (opts && opts.placeholder) i.placeholder = opts.placeholder;
    i.dataset.path = JSON.stringify(path);
    i.addEventListener("change", () => {
      let v = i.value;
      if (opts && opts.nullIfEmpty && v.trim() === "") v = null;
      setAt(path, v);
    });
    return i;
  }
  function field(label, node) {
    const l = el("label", label, "field");
    l.appendChild(node);
    return l;
  }
  function reviewBox(text, path) {
    const d = el("div", null, "review");
    d.appendChild(el("span", text));
    const b = el("button", "Accept");
    b.type = "button";
    b.className = "accept";
    b.dataset.path = JSON.stringify(path);
    b.addEventListener("click", () => delAt(path));
    d.appendChild(b);
    return d;
  }
  function mapEditor(map, path) {
    const d = el("div", null, "map");
    for (const [k, v] of Object.entries(map || {})) {
      const row = el("div");
      row.appendChild(el("span", k + " →"));
      if (v !== null && typeof v === "object") {
        row.appendChild(input(v.code, path.concat([k, "code"]), { label: "code for " + k, placeholder: "code" }));
        row.appendChild(input(v.display, path.concat([k, "display"]), { label: "display for " + k,
          placeholder: "display" }));
      } else {
        row.appendChild(input(v, path.concat([k]), { label: "value for " + k, nullIfEmpty: true,
          placeholder: "(absent)" }));
      }
      d.appendChild(row);
    }
    return d;
  }

  // ------------------------------------------------------------------ drawing
  function drawProfile(p) {
    $("profile-rows").textContent = String(p.rows);
    const tb = $("profile").tBodies[0];
    clear(tb);
    for (const c of p.columns) {
      const tr = el("tr");
      tr.appendChild(el("td", c.column + (c.unique ? " (unique)" : "")));
      tr.appendChild(el("td", c.type));
      tr.appendChild(el("td", Math.round(c.missing_share * 1000) / 10 + " %"));
      tr.appendChild(el("td", c.distinct));
      tr.appendChild(el("td", (c.examples || []).join(", ")));
      tb.appendChild(tr);
    }
    clear($("notes"));
    for (const n of p.notes || []) $("notes").appendChild(el("li", n));
  }
  function columnSelect(value, path, allowEmpty) {
    const s = el("select");
    s.setAttribute("aria-label", path.join("."));
    if (allowEmpty) { const o = el("option", "(none)"); o.value = ""; s.appendChild(o); }
    for (const c of Object.keys(state.profile)) { const o = el("option", c); o.value = c; s.appendChild(o); }
    if (value && !(value in state.profile)) { const o = el("option", value + " (not in the table)"); o.value = value; s.appendChild(o); }
    s.value = value || "";
    s.dataset.path = JSON.stringify(path);
    return s;
  }
  function drawPatient(m) {
    const box = $("patient");
    clear(box);
    const p = (m && m.patient) || {};
    const keyRow = el("div", null, "patient-part");
    keyRow.appendChild(el("b", "Key"));
    const ks = columnSelect(p.key || "", ["patient", "key"], true);
    ks.id = "patient-key";
    ks.addEventListener("change", () => {
      const edits = ks.value ? [{ op: "delete", path: ["patient", "key_generated"] },
        { op: "delete", path: ["patient", "key_columns"] }, { op: "set", path: ["patient", "key"], value: ks.value }]
        : [{ op: "delete", path: ["patient", "key"] }, { op: "set", path: ["patient", "key_generated"], value: "row-number" }];
      edit(edits);
    });
    keyRow.appendChild(ks);
    if (p.key_generated) keyRow.appendChild(el("span", " generated: " + p.key_generated, "muted"));
    if (p.key_columns) keyRow.appendChild(el("span", " columns: " + p.key_columns.join(" + "), "muted"));
    if (p.review) keyRow.appendChild(reviewBox(p.review, ["patient", "review"]));
    box.appendChild(keyRow);
    for (const part of ["gender", "birth_date", "deceased"]) {
      const spec = p[part];
      if (!spec) continue;
      const d = el("div", null, "patient-part");
      d.appendChild(el("b", part.replace("_", " ")));
      d.appendChild(el("span", "column " + spec.column));
      if (spec.map) d.appendChild(mapEditor(spec.map, ["patient", part, "map"]));
      if (spec.review) d.appendChild(reviewBox(spec.review, ["patient", part, "review"]));
      box.appendChild(d);
    }
  }
  function codeCell(o, i) {
    const td = el("td");
    if (o.code_from) {
      td.appendChild(el("span", "code from column " + o.code_from.column, "muted"));
      return td;
    }
    const codes = Array.isArray(o.code) ? o.code : [o.code || {}];
    const base = Array.isArray(o.code) ? ["observations", i, "code", 0] : ["observations", i, "code"];
    const c = codes[0] || {};
    td.appendChild(field("system", input(c.system, base.concat(["system"]), { wide: true })));
    td.appendChild(field("code", input(c.code, base.concat(["code"]))));
    td.appendChild(field("display", input(c.display, base.concat(["display"]), { wide: true })));
    if (codes.length > 1) td.appendChild(el("div", "+ " + (codes.length - 1) + " more coding(s) in the YAML", "muted"));
    const pick = el("input");
    pick.setAttribute("list", "catalogue");
    pick.setAttribute("aria-label", "catalogue entry for " + o.column);
    pick.placeholder = "catalogue entry…";
    pick.className = "pick";
    pick.addEventListener("change", () => {
      const e = state.catalogue[pick.value];
      if (!e) { status("no catalogue entry " + pick.value, true); return; }
      edit([{ op: "set", path: ["observations", i, "code"], value: e.code },
        { op: "set", path: ["observations", i, "value"], value: e.value }]);
    });
    td.appendChild(field("catalogue", pick));
    return td;
  }
  function valueCell(o, i) {
    const td = el("td");
    const v = o.value || {};
    const s = el("select");
    s.setAttribute("aria-label", "value type of " + o.column);
    for (const t of VALUE_TYPES) { const opt = el("option", t); opt.value = t; s.appendChild(opt); }
    s.value = v.type || "string";
    s.className = "vtype";
    s.addEventListener("change", () => setAt(["observations", i, "value", "type"], s.value));
    td.appendChild(field("type", s));
    if (v.type === "Quantity" || v.unit !== undefined) {
      const u = input(v.unit, ["observations", i, "value", "unit"], { label: "unit of " + o.column });
      u.classList.add("unit");
      td.appendChild(field("UCUM unit", u));
      if (v.unit_aliases) td.appendChild(el("div", "also read as: " + v.unit_aliases.join(", "), "muted"));
    }
    if (v.system !== undefined) td.appendChild(field("system", input(v.system, ["observations", i, "value", "system"], { wide: true })));
    if (v.map) td.appendChild(mapEditor(v.map, ["observations", i, "value", "map"]));
    if (v.map_ref) td.appendChild(el("div", "values from value map " + v.map_ref, "muted"));
    return td;
  }
  function drawObservations(m) {
    const tb = $("obs").tBodies[0];
    clear(tb);
    ((m && m.observations) || []).forEach((o, i) => {
      const tr = el("tr");
      tr.dataset.column = o.column;
      const c = el("td");
      c.appendChild(el("div", o.column, "colname"));
      const prof = state.profile[o.column];
      if (prof) c.appendChild(el("div", prof.type + " · e.g. " + (prof.examples || []).join(", "), "muted"));
      tr.appendChild(c);
      tr.appendChild(codeCell(o, i));
      tr.appendChild(valueCell(o, i));
      const r = el("td");
      if (o.review) r.appendChild(reviewBox(o.review, ["observations", i, "review"]));
      for (const part of ["code", "value"]) {
        const rv = o[part] && !Array.isArray(o[part]) ? o[part].review : null;
        if (rv) r.appendChild(reviewBox(rv, ["observations", i, part, "review"]));
      }
      tr.appendChild(r);
      const x = el("td");
      const b = el("button", "Do not import");
      b.type = "button";
      b.title = "remove this column from the mapping";
      b.addEventListener("click", () => delAt(["observations", i]));
      x.appendChild(b);
      tr.appendChild(x);
      tb.appendChild(tr);
    });
  }
  function drawConditions(m) {
    const box = $("conditions");
    clear(box);
    const conds = (m && m.conditions) || [];
    box.textContent = conds.length ? conds.map((c) => c.name).join(", ") + " (edit in the YAML below)"
      : "none (add conditions in the YAML below)";
  }
  function drawValidation(r) {
    const v = $("verdict");
    const n = (r.schema_errors || []).length + (r.pending || []).length + (r.fatal ? 1 : 0) + (r.issue_count || 0);
    v.textContent = !r.ready ? n + " item(s) to fix before the import accepts it"
      : r.complete ? "Ready to save: the import would accept this mapping (" + r.rows_read + " rows)."
        : "Ready to save: no problem in the first " + r.rows_read + " rows (saving checks the whole file).";
    v.className = "verdict " + (r.ready ? "ok" : "bad");
    const ul = $("pending");
    clear(ul);
    for (const e of r.schema_errors || []) ul.appendChild(el("li", e, "schema"));
    if (r.fatal) ul.appendChild(el("li", r.fatal, "fatal"));
    // review markers with an Accept button each (also those the form does not show, e.g. in conditions)
    for (const rv of r.reviews || []) {
      const li = el("li", null, "pending");
      li.appendChild(el("code", rv.path.join(".")));
      li.appendChild(reviewBox(rv.text, rv.path));
      ul.appendChild(li);
    }
    for (const p of r.pending || []) if (p.indexOf("check, then delete this line") < 0) ul.appendChild(el("li", p, "pending"));
    const tb = $("issues").tBodies[0];
    clear(tb);
    for (const i of r.issues || []) {
      const tr = el("tr");
      for (const k of ["row", "column", "value", "rule"]) tr.appendChild(el("td", i[k]));
      tb.appendChild(tr);
    }
    if ((r.issue_count || 0) > (r.issues || []).length) {
      const tr = el("tr");
      tr.appendChild(el("td", "… " + (r.issue_count - r.issues.length) + " more"));
      tb.appendChild(tr);
    }
  }
  function drawPreview(r) {
    const counts = Object.entries(r.resources || {}).map(([k, v]) => v + " " + k).join(", ");
    $("counts").textContent = counts ? "The whole file gives " + counts + "." : "";
    $("preview").textContent = (r.preview || []).map((p) => "// row " + p.row + "\n" +
      (p.issues.length ? p.issues.map((i) => "// " + i.column + ": " + i.rule).join("\n") + "\n" : "") +
      JSON.stringify(p.resources, null, 1)).join("\n\n");
  }
  function render(r) {
    state.yaml = r.yaml;
    state.mapping = r.mapping;
    if (r.mapping_key) state.mappingKey = r.mapping_key;
    $("yaml").value = r.yaml;
    drawPatient(r.mapping);
    drawObservations(r.mapping);
    drawConditions(r.mapping);
    drawValidation(r);
    drawPreview(r);
    $("save").disabled = !r.ready;
    bump();
  }

  // ------------------------------------------------------------------ save and report
  function save() {
    return serial(async () => {
      status("saving …");
      try {
        const r = await call("POST", "save", { key: state.key },
          JSON.stringify({ yaml: state.yaml, edits: [], base_etag: state.etag }));
        state.etag = r.mapping_etag;
        render(r);
        $("save-result").textContent = "Saved s3://" + r.bucket + "/" + r.mapping_key + "; the import watcher (" +
          r.watcher.dag_id + ") imports the table on its next run.";
        $("save-result").className = "ok";
        status("saved " + r.mapping_key);
        await loadTables(state.key);
      } catch (e) {
        if (e.data && e.data.yaml) render(e.data);
        $("save-result").textContent = e.message;
        $("save-result").className = "error";
        status("not saved", true);
      }
    });
  }
  function importStatus() {
    return serial(async () => {
      if (!state.key) return;
      const r = await call("GET", "report", { key: state.key });
      const rep = r.report;
      $("report").textContent = rep ? "Import report " + r.report_key + ": " + rep.status +
        (rep.resources_written ? " · written " + JSON.stringify(rep.resources_written) : "") +
        (rep.error ? " · " + rep.error : "") : "No import report yet (the watcher has not imported this table).";
      bump();
    });
  }

  async function init() {
    const projects = await call("GET", "../projects");
    const ps = $("project");
    for (const p of projects.projects) { const o = el("option", p.name); o.value = p.name; ps.appendChild(o); }
    const params = new URLSearchParams(window.location.search);
    if (params.get("project")) ps.value = params.get("project");
    state.project = ps.value;
    const cat = await call("GET", "catalogue");
    const dl = $("catalogue");
    for (const e of cat.entries) {
      state.catalogue[e.id] = e;
      const o = el("option");
      o.value = e.id;
      o.label = (e.code.display || e.code.code) + (e.value.unit ? " [" + e.value.unit + "]" : "");
      dl.appendChild(o);
    }
    ps.addEventListener("change", () => { state.project = ps.value; state.key = ""; serial(() => loadTables()); });
    $("refresh").addEventListener("click", () => serial(() => loadTables(state.key)));
    $("open").addEventListener("click", () => serial(() => openTable($("table").value)));
    $("upload").addEventListener("click", () => serial(upload));
    $("apply-text").addEventListener("click", () => serial(async () => {
      state.yaml = $("yaml").value;
      const r = await call("POST", "preview", { key: state.key }, JSON.stringify({ yaml: state.yaml, edits: [] }));
      render(r);
      status("checked the text");
    }));
    $("save").addEventListener("click", save);
    $("import-status").addEventListener("click", importStatus);
    await loadTables(params.get("key") || "");
    if (params.get("key")) await openTable(params.get("key"));
    status(state.key ? "loaded " + state.key : "ready: choose or upload a table");
    bump();
  }
  serial(init);
})();
