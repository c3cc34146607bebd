// A notebook screen: each cell drawn in a box with its SQL, its error or its result. Cells run top
// down through POST /api/screen-cell (the server runs the screen's stored SQL, macros expanded with the
// values of the variables above); changing a variable re-runs the cells below it. Charts are uPlot's.
// With write access, "Edit" lets the page edit the cells (SQL, name, type; add, delete, move) and saves the whole
// config through PUT /api/screens/<name>; /screens gets "New screen" and "Copy" (POST /api/screens).
"use strict";

(() => {
  const el = spanlake.el;

  // -- /screens: new and copied screens ---------------------------------------------------------------
  async function createScreen(body, error) {
    const response = await spanlake.fetch("/api/screens", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
    if (!response.ok) { error.textContent = answer.message || `HTTP ${response.status}`; error.hidden = false; return; }
    window.location.href = `/screen/${encodeURIComponent(answer.name)}`;
  }
  const newForm = document.getElementById("new-screen");
  if (newForm) {
    const error = newForm.querySelector(".new-screen-error");
    newForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const config = { timeRangeFrom: "now-1h", timeRangeTo: "now", cells: [] };
      createScreen({ name: newForm.elements.name.value, screen_type: "notebook", config, folder_path: newForm.elements.folder.value }, error);
    });
    for (const button of document.querySelectorAll("button.copy-screen")) {
      button.addEventListener("click", async () => {
        const name = window.prompt("Name of the copy", `${button.dataset.name}-copy`);
        if (!name) return;
        const original = await (await spanlake.fetch(`/api/screens/${encodeURIComponent(button.dataset.name)}`)).json();
        createScreen({ name, screen_type: original.screen_type, config: original.config, folder_path: original.folder_path }, error);
      });
    }
  }

  const root = document.getElementById("notebook");
  if (!root) return;
  const { screen, from: begin, to: end } = root.dataset;
  const LEVELS = ["", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
  const variables = {};
  const order = []; // every cell in run order, horizontal groups' children in place
  const tops = []; // the top-level cells and their boxes, in the config's order (what the editor changes)

  function isTime(column) { return column.type.startsWith("timestamp"); }
  function shown(value, column) {
    if (value === null || value === undefined) return "";
    if (column && isTime(column)) return new Date(value).toISOString();
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  function substitute(text) {
    let out = text.replace(/\$from\b/g, begin).replace(/\$to\b/g, end);
    for (const name of Object.keys(variables).sort((a, b) => b.length - a.length)) {
      const value = variables[name];
      const textValue = typeof value === "string" ? value : Object.values(value)[0] || "";
      out = out.replace(new RegExp(`\\$${name}\\b(?![.\\[])`, "g"), textValue);
    }
    return out;
  }

  // -- boxes -----------------------------------------------------------------------------------------
  function box(cell) {
    const name = typeof cell.name === "string" ? cell.name : "(unnamed)";
    const status = el("span", { class: "cell-status" });
    const sql = el("pre");
    const details = el("details", { class: "cell-sql", hidden: "" }, el("summary", {}, "SQL"), sql);
    const error = el("div", { class: "error cell-error", role: "alert", hidden: "" });
    const body = el("div", { class: "cell-body" });
    const section = el("section", { class: "cell", "data-cell": name, "data-type": String(cell.type) },
      el("header", {}, el("strong", {}, name), el("span", { class: "cell-type" }, String(cell.type)), status),
      details, error, body);
    return { cell, name, section, status, sql, details, error, body };
  }

  function layout(cells, parent) {
    for (const cell of cells) {
      if (cell === null || typeof cell !== "object") {
        const wrong = el("div", { class: "error cell-error", role: "alert" }, `a cell must be an object, given ${JSON.stringify(cell)}`);
        parent.append(wrong);
        if (parent === root) tops.push({ cell, section: wrong });
        continue;
      }
      const view = box(cell);
      parent.append(view.section);
      if (parent === root) tops.push({ cell, section: view.section });
      if (cell.type === "hg") {
        const row = el("div", { class: "cell-group" });
        view.body.append(row);
        if (Array.isArray(cell.children)) layout(cell.children, row);
        else fail(view, "a horizontal group needs a list of 'children'");
      } else {
        order.push(view);
      }
    }
  }

  function fail(view, message, sql) {
    view.error.textContent = message;
    view.error.hidden = false;
    view.section.dataset.state = "error";
    if (sql) { view.sql.textContent = sql; view.details.hidden = false; view.details.open = true; }
  }

  function begun(view) {
    view.error.hidden = true;
    view.body.replaceChildren();
    view.status.textContent = "running…";
    view.section.dataset.state = "running";
  }

  // -- running ---------------------------------------------------------------------------------------
  async function query(view) {
    const response = await spanlake.fetch("/api/screen-cell", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ screen, cell: view.name, variables, begin, end }),
    });
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (answer.sql) { view.sql.textContent = answer.sql; view.details.hidden = false; }
    if (!response.ok) throw Object.assign(new Error(answer.error || `HTTP ${response.status}`), { sql: answer.sql });
    view.status.textContent = `${answer.row_count.toLocaleString()} rows · ${answer.elapsed_ms} ms`;
    if (answer.truncated) {
      view.body.append(el("p", { class: "error cell-truncated", role: "alert" },
        `The result has more than ${answer.row_count.toLocaleString()} rows: only the first are shown. Narrow the query (LIMIT, WHERE, a shorter time range).`));
    }
    return answer;
  }

  async function runCell(index) {
    const view = order[index];
    begun(view);
    try {
      const draw = DRAW[view.cell.type];
      if (!draw) throw new Error(`unknown cell type '${view.cell.type}'`);
      await draw(view, index);
      view.section.dataset.state = view.section.dataset.state === "error" ? "error" : "done";
      if (!view.status.textContent.includes("rows")) view.status.textContent = "";
    } catch (err) {
      view.status.textContent = "";
      fail(view, err.message, err.sql);
    }
    view.section.dataset.runs = String(Number(view.section.dataset.runs || 0) + 1);
  }

  async function runFrom(index) {
    for (let i = index; i < order.length; i += 1) await runCell(i);
    root.dataset.ran = String(Number(root.dataset.ran || 0) + 1);
  }

  // -- cell types ------------------------------------------------------------------------------------
  function grid(answer, transposed) {
    const { columns, rows } = answer;
    const table = el("table", { class: "grid" });
    if (transposed) {
      const body = el("tbody");
      columns.forEach((c, i) => body.append(el("tr", {}, el("th", {}, c.name), ...rows.map((r) => el("td", {}, shown(r[i], c))))));
      table.append(body);
    } else {
      table.append(el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { title: c.type }, c.name)))));
      const body = el("tbody");
      for (const row of rows) body.append(el("tr", {}, ...row.map((v, i) => el("td", {}, shown(v, columns[i])))));
      table.append(body);
    }
    return table;
  }

  function column(answer, name) {
    const index = answer.columns.findIndex((c) => c.name === name);
    return index < 0 ? null : answer.rows.map((r) => r[index]);
  }
  function required(answer, names) {
    const missing = names.filter((n) => column(answer, n) === null);
    if (missing.length) {
      throw new Error(`missing column(s): ${missing.join(", ")}; the query must return ${names.join(", ")}`
        + ` (it returned ${answer.columns.map((c) => c.name).join(", ") || "no column"})`);
    }
  }

  function chart(view, answer) {
    if (answer.columns.length < 2 || !isTime(answer.columns[0])) {
      throw new Error("a chart's query returns a time column first, then one or more numeric columns");
    }
    const xs = answer.rows.map((r) => r[0] / 1000);
    const series = answer.columns.slice(1).map((c, i) => ({ label: c.name, values: answer.rows.map((r) => r[i + 1]) }));
    const target = el("div", { class: "cell-chart", "data-points": String(xs.length) });
    const numeric = series[0].values.filter((v) => typeof v === "number");
    if (numeric.length) target.dataset.max = String(Math.max(...numeric));
    view.body.append(target);
    const width = Math.max(300, view.body.clientWidth - 10);
    const opts = { width, height: (view.cell.layout && view.cell.layout.height) || 260, series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: ["#2563eb", "#dc2626", "#16a34a", "#9333ea"][i % 4] }))] };
    new uPlot(opts, [xs, ...series.map((s) => s.values)], target);
  }

  function logs(view, answer) {
    const list = el("div", { class: "cell-log" });
    const [times, levels, targets, msgs] = ["time", "level", "target", "msg"].map((n) => column(answer, n));
    if (!msgs) throw new Error("a log cell's query returns at least msg (and time, level, target)");
    msgs.forEach((msg, i) => {
      const level = levels ? (LEVELS[levels[i]] || String(levels[i])) : "";
      list.append(el("div", { class: `log-line level-${level.toLowerCase()}` },
        el("span", { class: "log-time" }, times ? new Date(times[i]).toISOString() : ""),
        el("span", { class: "log-level" }, level), el("span", { class: "log-target" }, targets ? targets[i] : ""),
        el("span", { class: "log-msg" }, msg)));
    });
    view.body.append(list);
  }

  // Spans aggregated by call path (a span's path: its parent's path, then its name), drawn as an icicle.
  function flamegraph(view, answer) {
    required(answer, ["id", "parent", "name", "begin", "end"]);
    const [ids, parents, names, begins, ends, depths] = ["id", "parent", "name", "begin", "end", "depth"].map((n) => column(answer, n));
    const byId = new Map(ids.map((id, i) => [String(id), i]));
    const paths = new Array(ids.length);
    // Walks up to the first span whose path is known (or a root), then fills the paths down; a loop of
    // parents (ids reused) ends the walk where it closes.
    const pathOf = (i) => {
      const chain = [];
      const seen = new Set();
      let at = i;
      while (at !== undefined && paths[at] === undefined && !seen.has(at)) {
        seen.add(at);
        chain.push(at);
        // depth 0 is a root whatever its parent says (a thread's root has parent 0, which a span may be)
        at = depths && Number(depths[at]) === 0 ? undefined : byId.get(String(parents[at]));
      }
      let prefix = at !== undefined && paths[at] !== undefined ? paths[at] + ";" : "";
      for (const j of chain.reverse()) { paths[j] = prefix + names[j]; prefix = paths[j] + ";"; }
      return paths[i];
    };
    const totals = new Map();
    ids.forEach((_, i) => totals.set(pathOf(i), (totals.get(pathOf(i)) || 0) + (ends[i] - begins[i])));
    const children = new Map();
    for (const path of [...totals.keys()].sort()) {
      const cut = path.lastIndexOf(";");
      const parent = cut < 0 ? "" : path.slice(0, cut);
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(path);
    }
    const roots = children.get("") || [];
    const whole = roots.reduce((sum, p) => sum + totals.get(p), 0) || 1;
    const graph = el("div", { class: "flamegraph" });
    const place = (path, left, depth) => {
      const share = totals.get(path) / whole;
      const name = path.slice(path.lastIndexOf(";") + 1);
      const node = el("div", { class: "flame-node", "data-path": path, "data-ms": String(totals.get(path)),
        title: `${path.replaceAll(";", " › ")}: ${totals.get(path).toFixed(3)} ms` }, name);
      node.style.left = `${left * 100}%`;
      node.style.width = `${share * 100}%`;
      node.style.top = `${depth * 20}px`;
      graph.append(node);
      let offset = left;
      for (const child of children.get(path) || []) { place(child, offset, depth + 1); offset += totals.get(child) / whole; }
      return depth;
    };
    let offset = 0;
    for (const path of roots) { place(path, offset, 0); offset += totals.get(path) / whole; }
    const depth = Math.max(0, ...[...totals.keys()].map((p) => p.split(";").length));
    graph.style.height = `${depth * 20}px`;
    view.body.append(graph);
  }

  function lanes(view, answer) {
    required(answer, ["id", "name", "begin", "end"]);
    const [ids, names, begins, ends] = ["id", "name", "begin", "end"].map((n) => column(answer, n));
    const labels = column(answer, "label");
    const lo = Math.min(...begins), hi = Math.max(...ends);
    const span = hi - lo || 1;
    const list = el("div", { class: "swimlane" });
    ids.forEach((id, i) => {
      const bar = el("div", { class: "lane-bar", title: `${names[i]}: ${(ends[i] - begins[i]).toFixed(3)} ms` }, labels ? shown(labels[i]) : "");
      bar.style.left = `${((begins[i] - lo) / span) * 100}%`;
      bar.style.width = `${Math.max(0.2, ((ends[i] - begins[i]) / span) * 100)}%`;
      list.append(el("div", { class: "lane", "data-lane": String(id) }, el("span", { class: "lane-name" }, names[i]), el("div", { class: "lane-track" }, bar)));
    });
    view.body.append(list);
  }

  function propertyPairs(value) {
    if (value === null || value === undefined) return [];
    if (Array.isArray(value)) return value.map((p) => (Array.isArray(p) ? p : [p.key, p.value]));
    if (typeof value === "string") { try { return Object.entries(JSON.parse(value)); } catch (_) { return []; } }
    return Object.entries(value);
  }

  // One lane per property: a segment for each run of one value.
  function propertyTimeline(view, answer) {
    required(answer, ["time", "properties"]);
    const [times, props] = ["time", "properties"].map((n) => column(answer, n));
    const lo = Math.min(...times), hi = Math.max(...times);
    const span = hi - lo || 1;
    const segments = new Map();
    times.forEach((t, i) => {
      for (const [key, value] of propertyPairs(props[i])) {
        const list = segments.get(key) || [];
        const last = list[list.length - 1];
        if (last && last.value === String(value)) last.end = t;
        else { if (last) last.end = t; list.push({ value: String(value), begin: t, end: t }); }
        segments.set(key, list);
      }
    });
    const table = el("div", { class: "swimlane property-timeline" });
    for (const [key, list] of [...segments.entries()].sort()) {
      const track = el("div", { class: "lane-track" });
      for (const s of list) {
        const bar = el("div", { class: "lane-bar", "data-value": s.value, title: `${key} = ${s.value}` }, s.value);
        bar.style.left = `${((s.begin - lo) / span) * 100}%`;
        bar.style.width = `${Math.max(1, ((s.end - s.begin) / span) * 100)}%`;
        track.append(bar);
      }
      table.append(el("div", { class: "lane", "data-property": key }, el("span", { class: "lane-name" }, key), track));
    }
    view.body.append(table);
  }

  // A tiny Markdown: headings, lists, paragraphs, **bold**, `code`; text only, never HTML.
  function markdown(view) {
    const text = substitute(typeof view.cell.content === "string" ? view.cell.content : "");
    const out = el("div", { class: "markdown" });
    let list = null;
    const inline = (line) => {
      const node = el("span");
      for (const part of line.split(/(\*\*[^*]+\*\*|`[^`]+`)/)) {
        if (part.startsWith("**") && part.endsWith("**") && part.length > 4) node.append(el("strong", {}, part.slice(2, -2)));
        else if (part.startsWith("`") && part.endsWith("`") && part.length > 2) node.append(el("code", {}, part.slice(1, -1)));
        else if (part) node.append(part);
      }
      return node;
    };
    for (const line of text.split("\n")) {
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const item = /^\s*[-*]\s+(.*)$/.exec(line);
      if (item) { if (!list) { list = el("ul"); out.append(list); } list.append(el("li", {}, inline(item[1]))); continue; }
      list = null;
      if (heading) out.append(el(`h${Math.min(6, heading[1].length + 1)}`, {}, inline(heading[2])));
      else if (line.trim()) out.append(el("p", {}, inline(line)));
    }
    view.body.append(out);
  }

  function perfetto(view) {
    const name = (view.cell.processIdVar || "$process_id").replace(/^\$/, "");
    const value = variables[name];
    const processId = typeof value === "string" ? value : value && Object.values(value)[0];
    if (!processId) throw new Error(`no process: set the variable '${name}' above this cell`);
    const spans = view.cell.spanType || "both";
    const query = new URLSearchParams({ begin, end, spans });
    view.body.append(el("p", {},
      el("a", { class: "perfetto-download", href: `/api/perfetto/${encodeURIComponent(processId)}?${query}` }, "Download the Perfetto trace"),
      " · ", el("a", { href: `/process/${encodeURIComponent(processId)}/perfetto?from=${encodeURIComponent(begin)}&to=${encodeURIComponent(end)}` }, "Open in Perfetto")));
  }

  async function variable(view, index) {
    const cell = view.cell;
    const name = view.name;
    const changed = (value) => { variables[name] = value; runFrom(index + 1); };
    if (cell.variableType === "text" || cell.variableType === "datasource") {
      const initial = name in variables ? variables[name] : (typeof cell.defaultValue === "string" ? cell.defaultValue : "");
      variables[name] = initial;
      const input = el("input", { class: "variable-input", name, value: initial });
      input.addEventListener("change", () => changed(input.value));
      view.body.append(el("label", {}, `${name} `, input));
      return;
    }
    if (cell.variableType !== "combobox") throw new Error(`variable type '${cell.variableType}' is not supported (text, combobox, datasource are)`);
    const answer = await query(view);
    const options = answer.rows.map((row) => (row.length === 1 ? shown(row[0], answer.columns[0])
      : Object.fromEntries(answer.columns.map((c, i) => [c.name, shown(row[i], c)]))));
    if (!options.length) throw new Error(`the query of variable '${name}' returned no row`);
    const texts = options.map((o) => (typeof o === "string" ? o : JSON.stringify(o)));
    const keep = name in variables ? texts.indexOf(typeof variables[name] === "string" ? variables[name] : JSON.stringify(variables[name])) : -1;
    const fallback = texts.indexOf(typeof cell.defaultValue === "string" ? cell.defaultValue : JSON.stringify(cell.defaultValue));
    const chosen = keep >= 0 ? keep : Math.max(0, fallback);
    variables[name] = options[chosen];
    const select = el("select", { class: "variable-input", name }, ...texts.map((t, i) => el("option", { value: String(i) }, options[i].constructor === Object ? Object.values(options[i])[0] : t)));
    select.value = String(chosen);
    select.addEventListener("change", () => changed(options[Number(select.value)]));
    view.body.append(el("label", {}, `${name} `, select));
  }

  const queried = (drawAnswer) => async (view) => drawAnswer(view, await query(view));
  const DRAW = {
    table: queried((view, answer) => view.body.append(grid(answer, false))),
    transposed: queried((view, answer) => view.body.append(grid(answer, true))),
    chart: queried(chart),
    log: queried(logs),
    flamegraph: queried(flamegraph),
    swimlane: queried(lanes),
    propertytimeline: queried(propertyTimeline),
    markdown: async (view) => markdown(view),
    perfettoexport: async (view) => perfetto(view),
    variable,
  };

  let notebook = null;
  try { notebook = JSON.parse(root.dataset.notebook); } catch (err) { /* shown below */ }
  if (!notebook || !Array.isArray(notebook.cells)) {
    root.append(el("div", { class: "error cell-error", role: "alert" }, "This screen's config has no list of cells: fix it with the API (PUT /api/screens/<name>)."));
    root.dataset.ran = "1";
    return;
  }
  layout(notebook.cells, root);
  if (root.dataset.editable) editor();
  runFrom(0);

  // -- editing ---------------------------------------------------------------------------------------
  // Edits change `tops` (each cell a copy of the stored one) and the boxes' places; Save sends the whole
  // config and reloads, so what is shown is always what is stored.
  // The "Edit" button turns the page into the editor: the cells' panels, then "Add cell" and "Save".
  function editor() {
    const start = el("button", { type: "button", class: "edit-screen" }, "Edit");
    root.prepend(el("div", { class: "screen-edit" }, start));
    start.addEventListener("click", () => {
      start.disabled = true;
      tops.forEach((top) => { top.cell = structuredClone(top.cell); controls(top); });
      root.append(toolbar());
    });
  }

  function toolbar() {
    const bar = el("div", { class: "screen-edit" });
    const error = el("span", { class: "error save-error", role: "alert", hidden: "" });
    const add = el("button", { type: "button", class: "add-cell" }, "Add cell");
    const save = el("button", { type: "button", class: "save-screen" }, "Save");
    bar.append(add, " ", save, " ", error);
    add.addEventListener("click", () => {
      const top = { cell: { name: `cell-${tops.length + 1}`, type: "table", sql: "SELECT 1 AS one" } };
      top.section = box(top.cell).section;
      root.insertBefore(top.section, bar);
      tops.push(top);
      controls(top).open = true;
    });
    save.addEventListener("click", async () => {
      const config = { ...notebook, cells: tops.map((top) => top.cell) };
      const response = await spanlake.fetch(`/api/screens/${encodeURIComponent(screen)}`, {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ config }),
      });
      if (response.ok) { window.location.reload(); return; }
      const answer = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
      error.textContent = answer.message || `HTTP ${response.status}`;
      error.hidden = false;
    });
    return bar;
  }

  function field(label, input) { return el("label", {}, `${label} `, input); }

  // A cell's edit panel: its name, type and SQL (a markdown cell's text), and its place in the notebook.
  // A horizontal group's children are edited through the API (the panel moves or deletes the group whole).
  function controls(top) {
    const { cell } = top;
    if (cell === null || typeof cell !== "object") return null; // kept as stored; the API fixes it
    const textKey = cell.type === "markdown" ? "content" : "sql";
    const name = el("input", { class: "edit-name", value: String(cell.name || "") });
    const types = [...Object.keys(DRAW), "hg"].sort();
    const type = el("select", { class: "edit-type" }, ...types.map((t) => el("option", { value: t }, t)));
    type.value = String(cell.type);
    const text = el("textarea", { class: "edit-sql", rows: "6", cols: "80" });
    text.value = typeof cell[textKey] === "string" ? cell[textKey] : "";
    name.addEventListener("input", () => { cell.name = name.value; });
    type.addEventListener("change", () => { cell.type = type.value; });
    text.addEventListener("input", () => { cell[cell.type === "markdown" ? "content" : "sql"] = text.value; });
    const button = (label, cls, act) => {
      const b = el("button", { type: "button", class: cls }, label);
      b.addEventListener("click", act);
      return b;
    };
    const panel = el("details", { class: "cell-edit" }, el("summary", {}, "Edit"),
      field("name", name), " ", field("type", type), el("br"), text, el("br"),
      button("↑", "move-up", () => move(top, -1)), button("↓", "move-down", () => move(top, 1)),
      button("Delete", "delete-cell", () => { tops.splice(tops.indexOf(top), 1); top.section.remove(); }));
    const header = top.section.querySelector("header");
    if (header) header.after(panel); else top.section.append(panel);
    return panel;
  }

  function move(top, step) {
    const at = tops.indexOf(top);
    const to = at + step;
    if (to < 0 || to >= tops.length) return;
    const other = tops[to];
    tops[to] = top;
    tops[at] = other;
    if (step < 0) root.insertBefore(top.section, other.section);
    else root.insertBefore(other.section, top.section);
  }
})();
