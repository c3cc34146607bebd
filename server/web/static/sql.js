// The SQL page: runs the editor's statement with the page's time range as the query range,
// shows the rows with their count, size and time, and exports them as CSV.
"use strict";

(() => {
  const form = document.getElementById("sql-form");
  const text = document.getElementById("sql-text");
  const status = document.getElementById("sql-status");
  const errorBox = document.getElementById("sql-error");
  const result = document.getElementById("sql-result");
  const csvButton = document.getElementById("csv");
  let last = null;

  function cell(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function render(answer) {
    const head = spanlake.el("tr", {}, ...answer.columns.map((c) => spanlake.el("th", { title: c.type }, c.name)));
    const body = spanlake.el("tbody");
    for (const row of answer.rows) body.append(spanlake.el("tr", {}, ...row.map((v) => spanlake.el("td", {}, cell(v)))));
    result.replaceChildren(spanlake.el("table", { class: "grid", id: "result-table" }, spanlake.el("thead", {}, head), body));
  }

  async function run() {
    errorBox.hidden = true;
    status.textContent = "running…";
    const request = {
      sql: text.value,
      begin: form.dataset.from,
      end: form.dataset.to,
      limit: Number(document.getElementById("sql-limit").value) || 1000,
    };
    const started = performance.now();
    try {
      const answer = await spanlake.json(await spanlake.fetch("/api/sql", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      }));
      last = answer;
      render(answer);
      const kb = (answer.bytes / 1024).toFixed(1);
      status.textContent = `${answer.row_count.toLocaleString()} rows${answer.truncated ? " (row limit reached)" : ""}`
        + ` · ${kb} KiB · ${answer.elapsed_ms} ms server, ${Math.round(performance.now() - started)} ms total`;
      status.dataset.rows = answer.row_count;
      csvButton.disabled = false;
      const url = new URL(window.location.href);
      url.searchParams.set("q", text.value);
      history.replaceState(null, "", url);
    } catch (err) {
      status.textContent = "";
      errorBox.textContent = err.message;
      errorBox.hidden = false;
      result.replaceChildren();
      csvButton.disabled = true;
    }
  }

  function csvField(value) {
    const s = cell(value);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  csvButton.addEventListener("click", () => {
    if (!last) return;
    const lines = [last.columns.map((c) => csvField(c.name)).join(",")];
    for (const row of last.rows) lines.push(row.map(csvField).join(","));
    const link = spanlake.el("a", {
      href: URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" })), download: "query.csv",
    });
    document.body.append(link);
    link.click();
    link.remove();
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
})();
