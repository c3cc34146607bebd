// A trace's waterfall across processes: one band per process (its header links to the process), the
// spans of a band as a tree, bars on the trace's timeline, the critical path highlighted, and the
// links to a parent in another process or across a hand-off drawn as arrows. Only the visible window
// is in the page: rows are fetched a page at a time, as the window reaches them.
"use strict";

const ROW_HEIGHT = 22;
const OVERSCAN = 10; // rows drawn above and below the window

class Waterfall {
  constructor(root) {
    this.root = root;
    this.source = root.dataset.source;
    this.scroller = root.querySelector(".waterfall-scroll");
    this.space = root.querySelector(".waterfall-space");
    this.rows = root.querySelector(".waterfall-rows");
    this.svg = root.querySelector("svg.connectors");
    this.status = root.querySelector(".trace-status");
    this.details = root.querySelector(".span-details");
    this.byRow = new Map(); // row → span
    this.pages = new Map(); // page number → promise of its spans
    this.bandAt = new Map(); // header row → band
    this.selected = null;
    this.scroller.addEventListener("scroll", () => this.draw());
  }

  async load() {
    const started = performance.now();
    try {
      const span = this.root.dataset.span;
      const first = await this.fetchPage(span ? { span } : { offset: 0 });
      this.frame = first;
      for (const band of first.bands) this.bandAt.set(band.first_row - 1, band);
      this.space.style.height = `${first.row_count * ROW_HEIGHT}px`;
      this.pages.set(first.offset / first.limit, Promise.resolve(first.spans));
      this.keep(first.spans);
      if (first.selected !== null) this.scrollToIndex(first.selected);
      this.draw();
      const ms = Math.round(performance.now() - started);
      const processes = first.bands.length;
      this.status.textContent = `${first.spans_total.toLocaleString()} span${first.spans_total === 1 ? "" : "s"} in ` +
        `${processes} process${processes === 1 ? "" : "es"} · ${spanlake.duration(first.duration_ns)} · ` +
        `${first.critical_spans} on the critical path · loaded in ${ms} ms`;
      this.root.dataset.loaded = "true";
    } catch (err) {
      this.fail(err);
    }
  }

  async fetchPage(params) {
    const url = new URL(this.source, window.location.href);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    return spanlake.json(await spanlake.fetch(url));
  }

  keep(spans) {
    for (const span of spans) this.byRow.set(span.row, span);
  }

  /** The spans of page `number`, fetched once. */
  page(number) {
    if (!this.pages.has(number)) {
      const promise = this.fetchPage({ offset: number * this.frame.limit, limit: this.frame.limit }).then((page) => {
        this.keep(page.spans);
        return page.spans;
      });
      promise.catch((err) => { this.pages.delete(number); this.fail(err); });
      this.pages.set(number, promise);
    }
    return this.pages.get(number);
  }

  /** The span index of a row (null for a band's header). */
  indexOf(row) {
    let before = 0;
    for (const band of this.frame.bands) {
      if (row < band.first_row) return null;
      if (row < band.first_row + band.spans) return before + row - band.first_row;
      before += band.spans;
    }
    return null;
  }

  rowOfIndex(index) {
    let before = 0;
    for (const band of this.frame.bands) {
      if (index < before + band.spans) return band.first_row + index - before;
      before += band.spans;
    }
    return null;
  }

  scrollToIndex(index) {
    const row = this.rowOfIndex(index);
    this.scroller.scrollTop = Math.max(0, row * ROW_HEIGHT - this.scroller.clientHeight / 2);
    this.pendingSelect = row;
  }

  /** Draws the rows in the window (plus OVERSCAN), fetching the pages they are on. */
  draw() {
    if (!this.frame) return;
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.frame.row_count - 1, Math.ceil((this.scroller.scrollTop + this.scroller.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    const missing = new Set();
    const nodes = [];
    for (let row = first; row <= last; row++) {
      if (this.bandAt.has(row)) nodes.push(this.bandNode(row, this.bandAt.get(row)));
      else if (this.byRow.has(row)) nodes.push(this.spanNode(this.byRow.get(row)));
      else missing.add(Math.floor(this.indexOf(row) / this.frame.limit));
    }
    this.rows.replaceChildren(...nodes);
    this.connect(first, last);
    if (this.pendingSelect !== undefined && this.byRow.has(this.pendingSelect)) {
      const row = this.pendingSelect;
      delete this.pendingSelect;
      this.select(this.byRow.get(row));
    }
    for (const number of missing) this.page(number).then(() => this.draw());
  }

  place(node, row) {
    node.style.top = `${row * ROW_HEIGHT}px`;
    return node;
  }

  bandNode(row, band) {
    return this.place(spanlake.el("div", { class: "band-header", "data-process": band.process_id },
      spanlake.el("a", { href: `/process/${band.process_id}` }, band.exe || band.process_id),
      spanlake.el("code", {}, ` ${band.process_id}`),
      spanlake.el("span", { class: "band-count" }, ` · ${band.spans.toLocaleString()} span${band.spans === 1 ? "" : "s"}`)), row);
  }

  x(offsetNs) {
    return (offsetNs / Math.max(this.frame.duration_ns, 1)) * 100;
  }

  spanNode(span) {
    const end = span.end === null ? span.begin : span.end;
    const bar = spanlake.el("div", {
      class: `bar${span.critical ? " critical" : ""}`,
      style: `left:${this.x(span.begin).toFixed(3)}%;width:${Math.max(this.x(end - span.begin), 0.05).toFixed(3)}%`,
    });
    const label = spanlake.el("div", { class: "span-label", style: `padding-left:${span.band_depth * 14}px` },
      spanlake.el("span", { class: "span-name" }, span.name || "(unnamed)"));
    if (span.link) label.append(spanlake.el("span", { class: `link-chip ${span.link}` }, span.link === "remote" ? "↰ remote parent" : "↰ hand-off"));
    const node = spanlake.el("div", {
      class: `span-row${span.critical ? " critical" : ""}${this.selected === span.row ? " selected" : ""}`,
      role: "treeitem", "data-span": span.span_id, "data-row": span.row, "data-name": span.name,
      "data-link": span.link || null, "data-critical": span.critical ? "true" : null,
    }, label, spanlake.el("span", { class: "span-duration" }, span.end === null ? "open" : spanlake.duration(span.end - span.begin)),
    spanlake.el("div", { class: "lane" }, bar));
    node.addEventListener("click", () => this.select(span));
    return this.place(node, span.row);
  }

  /** An arrow from the parent's row down (or up) to the child's, at the child's begin, for each drawn
   * span whose parent is in another process or handed the work over. */
  connect(first, last) {
    const width = this.rows.clientWidth;
    const laneLeft = this.root.querySelector(".waterfall-head .axis").offsetLeft;
    const laneWidth = width - laneLeft;
    const lines = [];
    for (let row = first; row <= last; row++) {
      const span = this.byRow.get(row);
      if (!span || !span.link || span.parent_row === null) continue;
      const x = laneLeft + (this.x(span.begin) / 100) * laneWidth;
      const fromRow = Math.min(Math.max(span.parent_row, first), last);
      const y1 = fromRow * ROW_HEIGHT + ROW_HEIGHT / 2;
      const y2 = row * ROW_HEIGHT + ROW_HEIGHT / 2;
      const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
      line.setAttribute("d", `M${x} ${y1} L${x} ${y2 - 4} l-3 -4 m3 4 l3 -4`);
      line.setAttribute("class", `connector ${span.link}`);
      line.dataset.child = span.span_id;
      lines.push(line);
    }
    this.svg.replaceChildren(...lines);
  }

  select(span) {
    this.selected = span.row;
    for (const node of this.rows.querySelectorAll(".span-row.selected")) node.classList.remove("selected");
    const node = this.rows.querySelector(`.span-row[data-row="${span.row}"]`);
    if (node) node.classList.add("selected");
    const parent = span.parent_row === null ? null : this.byRow.get(span.parent_row);
    const fields = [
      ["name", span.name], ["kind", span.kind || ""], ["target", span.target || ""],
      ["trace id", this.frame.trace_id], ["span id", span.span_id], ["parent span id", span.parent_span_id || ""],
      ["parent", parent ? `${parent.name} (${parent.exe || parent.process_id})` : ""],
      ["link", span.link || ""], ["critical path", span.critical ? "yes" : "no"],
      ["begin", `+${spanlake.duration(span.begin)}`], ["end", span.end === null ? "open" : `+${spanlake.duration(span.end)}`],
      ["duration", span.end === null ? "" : spanlake.duration(span.end - span.begin)], ["depth in trace", span.depth],
    ];
    for (const [key, value] of Object.entries(span.details)) {
      if (key !== "links") fields.push([key, typeof value === "string" ? value : JSON.stringify(value)]);
    }
    const list = spanlake.el("dl");
    for (const [key, value] of fields) list.append(spanlake.el("dt", {}, key), spanlake.el("dd", { "data-field": key }, value ?? ""));
    // Links (fan-in, follows-from) open the span they name, in its own trace.
    const links = (span.details.links || []).map((link) => spanlake.el("a", { href: `/trace/${link.trace_id}?span=${link.span_id}` },
      `${link.trace_id} / ${link.span_id}`));
    list.append(spanlake.el("dt", {}, "links"), spanlake.el("dd", { "data-field": "links" }, ...(links.length ? links : [""])));
    list.append(spanlake.el("dt", {}, "process"), spanlake.el("dd", { "data-field": "process" },
      spanlake.el("a", { href: `/process/${span.process_id}` }, `${span.exe || ""} ${span.process_id}`)));
    this.details.replaceChildren(list);
    this.details.hidden = false;
    const url = new URL(window.location.href);
    url.searchParams.set("span", span.span_id);
    window.history.replaceState(null, "", url);
  }

  fail(err) {
    this.status.textContent = `error: ${err.message}`;
    this.status.classList.add("error");
    this.status.setAttribute("role", "alert");
  }
}

for (const root of document.querySelectorAll(".waterfall")) new Waterfall(root).load();
