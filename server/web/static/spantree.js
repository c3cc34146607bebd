// Span trees (async spans of a process, call trees of a thread), loaded one level at a time:
// the top-level spans first, a span's children when it is expanded. Every bar sits on one timeline
// shared by the whole tree, so a child's bar lines up under its parent's.
"use strict";

class SpanTree {
  constructor(root) {
    this.root = root;
    this.source = root.dataset.source;
    this.rows = root.querySelector(".tree-rows");
    this.status = root.querySelector(".tree-status");
    this.details = root.querySelector(".span-details");
    this.search = root.querySelector(".tree-search");
    this.spans = new Map(); // id → span, every span loaded so far
    this.timeline = null; // [begin, end] in ns after the range's begin
    this.selected = null;
    this.toggles = new WeakMap(); // row → expand / collapse
    this.search.addEventListener("input", () => this.highlight());
    this.search.addEventListener("keydown", (event) => { if (event.key === "Enter") this.find(); });
    this.found = { text: null, index: 0 };
    this.rows.addEventListener("keydown", (event) => this.onKey(event));
  }

  url(params) {
    const url = new URL(this.source, window.location.href);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    return url;
  }

  async fetchLevel(params) {
    return spanlake.json(await spanlake.fetch(this.url(params)));
  }

  async load() {
    this.setStatus("loading the top-level spans…");
    const started = performance.now();
    try {
      const level = await this.fetchLevel({});
      this.base = level.base;
      this.timeline = this.timelineOf(level);
      this.appendLevel(this.rows, level, null, 0);
      const ms = Math.round(performance.now() - started);
      this.setStatus(`${level.total.toLocaleString()} top-level span${level.total === 1 ? "" : "s"} · loaded in ${ms} ms`);
      this.root.dataset.loaded = "true";
    } catch (err) {
      this.fail(err);
    }
  }

  timelineOf(level) {
    if (!level.spans.length) return [0, level.range_ns];
    const begin = Math.min(...level.spans.map((s) => s.begin));
    const end = Math.max(...level.spans.map((s) => (s.end === null ? level.range_ns : s.end)));
    return [begin, Math.max(end, begin + 1)];
  }

  appendLevel(container, level, parentId, offset) {
    for (const span of level.spans) {
      this.spans.set(span.id, span);
      container.append(this.node(span));
    }
    const shown = offset + level.spans.length;
    if (shown < level.total) {
      const more = spanlake.el("div", { class: "more" }, `${shown.toLocaleString()} of ${level.total.toLocaleString()} shown `);
      more.append(spanlake.el("button", {
        type: "button",
        onclick: async () => {
          more.remove();
          const params = { offset: shown };
          if (parentId !== null) params.parent = parentId;
          try { this.appendLevel(container, await this.fetchLevel(params), parentId, shown); } catch (err) { this.fail(err); }
          this.highlight();
        },
      }, `show ${Math.min(level.limit, level.total - shown).toLocaleString()} more`));
      container.append(more);
    }
    if (!level.spans.length && parentId === null) container.append(spanlake.el("div", { class: "more" }, "No spans in this time range."));
  }

  node(span) {
    const [begin, end] = this.timeline;
    const width = end - begin;
    const spanEnd = span.end === null ? end : span.end;
    const left = ((span.begin - begin) / width) * 100;
    const barWidth = Math.max(((spanEnd - span.begin) / width) * 100, 0.05);
    const bar = spanlake.el("div", {
      class: span.end === null ? "bar open-ended" : "bar",
      style: `left:${left.toFixed(3)}%;width:${barWidth.toFixed(3)}%`,
    });
    const hasKids = span.children > 0;
    const label = spanlake.el("div", { class: "span-label", style: `padding-left:${span.depth * 16}px` },
      spanlake.el("span", { class: "twisty" }, hasKids ? "▸" : "·"),
      spanlake.el("span", { class: "span-name" }, span.name || "(unnamed)"));
    if (hasKids) label.append(spanlake.el("span", { class: "span-kids" }, `${span.children.toLocaleString()}`));
    const row = spanlake.el("div", {
      class: "span-row", role: "treeitem", tabindex: "-1", "data-id": span.id, "data-depth": span.depth,
      "data-name": span.name, "aria-level": span.depth + 1, "aria-expanded": hasKids ? "false" : null,
    }, label, spanlake.el("span", { class: "span-duration" }, span.end === null ? "open" : spanlake.duration(span.end - span.begin)),
    spanlake.el("div", { class: "lane" }, bar));
    const children = spanlake.el("div", { class: "span-children", role: "group", hidden: "" });
    const node = spanlake.el("div", { class: "span-node" }, row, children);
    const toggle = () => this.toggle(row, children, span);
    if (hasKids) this.toggles.set(row, toggle);
    // A click selects (details below); the arrow, a double click or ←/→ expand and collapse.
    row.addEventListener("click", (event) => {
      this.select(row, span);
      if (hasKids && (event.target.closest(".twisty") || event.detail === 2)) toggle();
    });
    return node;
  }

  async toggle(row, children, span) {
    const open = row.getAttribute("aria-expanded") === "true";
    row.setAttribute("aria-expanded", open ? "false" : "true");
    row.querySelector(".twisty").textContent = open ? "▸" : "▾";
    children.hidden = open;
    if (open || children.dataset.loaded) return;
    children.dataset.loaded = "loading";
    children.append(spanlake.el("div", { class: "more" }, "loading…"));
    try {
      const level = await this.fetchLevel({ parent: span.id });
      children.replaceChildren();
      this.appendLevel(children, level, span.id, 0);
      children.dataset.loaded = "true";
      this.highlight();
    } catch (err) {
      children.replaceChildren();
      delete children.dataset.loaded;
      this.fail(err);
    }
  }

  select(row, span) {
    if (this.selected) this.selected.classList.remove("selected");
    this.selected = row;
    row.classList.add("selected");
    row.focus({ preventScroll: true });
    const at = (offset) => (offset === null ? "not in the time range" : `${this.absolute(offset)}  (+${spanlake.duration(offset)})`);
    const fields = [
      ["name", span.name], ["target", span.target], ["location", span.filename ? `${span.filename}:${span.line}` : ""],
      ["span id", span.id], ["span id (hex)", spanlake.hex64(span.id)], ["parent", span.parent],
      ["parent (hex)", span.depth === 0 ? "" : spanlake.hex64(span.parent)], ["depth", span.depth], ["begin", at(span.begin)], ["end", at(span.end)],
      ["duration", span.end === null ? "" : spanlake.duration(span.end - span.begin)], ["children", span.children],
    ];
    const list = spanlake.el("dl");
    for (const [key, value] of fields) list.append(spanlake.el("dt", {}, key), spanlake.el("dd", { "data-field": key }, value));
    this.details.replaceChildren(list);
    this.details.hidden = false;
    if (this.root.dataset.traceSource) this.showTrace(list, span);
  }

  /** The span's trace facts (async spans of the SDK): its trace, linked, with the processes it crosses,
   * its kind and attributes. */
  async showTrace(list, span) {
    const url = new URL(this.root.dataset.traceSource, window.location.href);
    url.searchParams.set("span", span.id);
    try {
      const found = await spanlake.json(await spanlake.fetch(url));
      if (!found.trace_id || !list.isConnected) return;
      const count = found.processes.length;
      const link = spanlake.el("a", { href: `/trace/${found.trace_id}?span=${found.span_hex}`, class: count > 1 ? "trace-link crosses" : "trace-link" },
        found.trace_id);
      const where = count > 1 ? ` · across ${count} processes (${found.processes.map((p) => p.exe || p.process_id).join(", ")})` : " · this process only";
      list.append(spanlake.el("dt", {}, "trace"), spanlake.el("dd", { "data-field": "trace" }, link, where),
        spanlake.el("dt", {}, "kind"), spanlake.el("dd", { "data-field": "kind" }, found.kind),
        spanlake.el("dt", {}, "attributes"), spanlake.el("dd", { "data-field": "attributes" }, found.attributes));
    } catch (err) {
      this.fail(err);
    }
  }

  absolute(offsetNs) {
    const baseMs = Date.parse(this.base.replace(/\.(\d{3})\d*/, ".$1"));
    const subMs = Number((this.base.match(/\.\d{3}(\d*)/) || ["", ""])[1].padEnd(6, "0").slice(0, 6)) / 1e6;
    const total = baseMs + subMs + offsetNs / 1e6;
    const date = new Date(Math.floor(total));
    const micros = String(Math.round((total - Math.floor(total)) * 1000)).padStart(3, "0");
    return date.toISOString().replace("Z", `${micros}Z`);
  }

  highlight() {
    const needle = this.search.value.trim().toLowerCase();
    let hits = 0;
    for (const row of this.rows.querySelectorAll(".span-row")) {
      const hit = needle !== "" && (row.dataset.name || "").toLowerCase().includes(needle);
      row.classList.toggle("hit", hit);
      hits += hit ? 1 : 0;
    }
    if (needle) this.setStatus(`${hits} of ${this.spans.size.toLocaleString()} loaded spans match “${this.search.value.trim()}” · Enter: find in the whole tree`);
  }

  /** Enter in the search box: the next span whose name matches, anywhere in the tree (loaded or not),
   * its path from the root expanded level by level, then selected. */
  async find() {
    const text = this.search.value.trim();
    if (!text) return;
    if (text !== this.found.text) this.found = { text, index: 0 };
    const url = this.url({ name: text, n: this.found.index });
    url.pathname += "/find";
    try {
      const found = await spanlake.json(await spanlake.fetch(url));
      if (!found.total) { this.setStatus(`no span named like “${text}” in this time range`); return; }
      const row = await this.reveal(found.path);
      const where = row ? "" : " (its top-level span is not among the loaded ones: use “show more” or a narrower range)";
      this.setStatus(`match ${found.index + 1} of ${found.total.toLocaleString()} for “${text}”${where} · Enter: next`);
      this.found.index = (found.index + 1) % found.total;
    } catch (err) {
      this.fail(err);
    }
  }

  /** Expands the ancestors of path's last span (ids from the root) and selects it; null if not on the page. */
  async reveal(path) {
    let row = null;
    for (const [i, id] of path.entries()) {
      row = this.rows.querySelector(`.span-row[data-id="${CSS.escape(id)}"]`);
      if (!row) return null;
      if (i < path.length - 1 && row.getAttribute("aria-expanded") === "false") await this.toggles.get(row)();
    }
    row.scrollIntoView({ block: "center" });
    row.click();
    this.highlight();
    return row;
  }

  onKey(event) {
    const row = event.target.closest(".span-row");
    if (!row) return;
    const visible = [...this.rows.querySelectorAll(".span-row")].filter((r) => r.offsetParent !== null);
    const index = visible.indexOf(row);
    const expanded = row.getAttribute("aria-expanded");
    if (event.key === "ArrowDown" && visible[index + 1]) visible[index + 1].click();
    else if (event.key === "ArrowUp" && visible[index - 1]) visible[index - 1].click();
    else if ((event.key === "ArrowRight" && expanded === "false") || (event.key === "ArrowLeft" && expanded === "true")) this.toggles.get(row)();
    else return;
    event.preventDefault();
  }

  setStatus(text) {
    this.status.textContent = text;
    this.status.classList.remove("error");
  }

  fail(err) {
    this.status.textContent = `error: ${err.message}`;
    this.status.classList.add("error");
    this.status.setAttribute("role", "alert");
  }
}

for (const root of document.querySelectorAll(".spantree")) {
  const tree = new SpanTree(root);
  const holder = root.closest("details");
  if (!holder) tree.load();
  else holder.addEventListener("toggle", () => { if (holder.open && !root.dataset.loaded) tree.load(); });
}
