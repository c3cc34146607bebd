// Perfetto: streams the trace from the server with progress (MB and chunks received, cancellable),
// then saves it or hands it to ui.perfetto.dev through its postMessage handshake
// (PING until the UI answers PONG, then {perfetto: {buffer, title}}).
"use strict";

(() => {
  const PERFETTO_ORIGIN = "https://ui.perfetto.dev";
  const form = document.getElementById("perfetto");
  const progress = document.getElementById("progress");
  const errorBox = document.getElementById("perfetto-error");
  const cancel = document.getElementById("cancel");
  const buttons = [document.getElementById("open-perfetto"), document.getElementById("download")];
  let controller = null;

  function spans() { return form.querySelector("input[name=spans]:checked").value; }

  function traceUrl() {
    const url = new URL(form.dataset.url, window.location.href);
    url.searchParams.set("spans", spans());
    url.searchParams.set("begin", form.dataset.begin);
    url.searchParams.set("end", form.dataset.end);
    return url;
  }

  function busy(on) {
    for (const b of buttons) b.disabled = on;
    cancel.hidden = !on;
  }

  async function fetchTrace() {
    controller = new AbortController();
    const response = await spanlake.fetch(traceUrl(), { signal: controller.signal });
    if (!response.ok) throw new Error(await response.text() || `HTTP ${response.status}`);
    const reader = response.body.getReader();
    const parts = [];
    let bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      bytes += value.length;
      progress.textContent = `generating… ${(bytes / 1e6).toFixed(2)} MB received in ${parts.length} chunks`;
    }
    const buffer = new Uint8Array(bytes);
    let at = 0;
    for (const part of parts) { buffer.set(part, at); at += part.length; }
    progress.textContent = `${(bytes / 1e6).toFixed(2)} MB received in ${parts.length} chunks`;
    progress.dataset.bytes = bytes;
    return buffer.buffer;
  }

  async function withTrace(use) {
    errorBox.hidden = true;
    busy(true);
    try {
      await use(await fetchTrace());
    } catch (err) {
      if (err.name === "AbortError") progress.textContent = "cancelled";
      else { errorBox.textContent = err.message; errorBox.hidden = false; progress.textContent = ""; }
    } finally {
      busy(false);
      controller = null;
    }
  }

  function save(buffer) {
    const link = spanlake.el("a", {
      href: URL.createObjectURL(new Blob([buffer], { type: "application/octet-stream" })),
      download: `${form.dataset.url.split("/").pop()}-${spans()}.pftrace`,
    });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function openInPerfetto(win, buffer) {
    return new Promise((resolve, reject) => {
      const title = `${form.dataset.title} (${spans()} spans)`;
      let tries = 0;
      const onMessage = (event) => {
        if (event.origin !== PERFETTO_ORIGIN || event.data !== "PONG") return;
        clearInterval(timer);
        window.removeEventListener("message", onMessage);
        win.postMessage({ perfetto: { buffer, title, keepApiOpen: false } }, PERFETTO_ORIGIN);
        progress.textContent += " · sent to Perfetto";
        resolve();
      };
      window.addEventListener("message", onMessage);
      const timer = setInterval(() => {
        if (++tries > 100 || win.closed) {
          clearInterval(timer);
          window.removeEventListener("message", onMessage);
          reject(new Error("ui.perfetto.dev did not answer (was the window closed or blocked?)"));
          return;
        }
        win.postMessage("PING", PERFETTO_ORIGIN);
      }, 100);
    });
  }

  document.getElementById("download").addEventListener("click", () => withTrace(async (buffer) => save(buffer)));
  document.getElementById("open-perfetto").addEventListener("click", () => {
    // Opened on the click itself, before the download: popup blockers allow only that.
    const win = window.open(`${PERFETTO_ORIGIN}/#!/`, "_blank");
    if (!win) { errorBox.textContent = "the browser blocked the Perfetto window"; errorBox.hidden = false; return; }
    withTrace((buffer) => openInPerfetto(win, buffer));
  });
  cancel.addEventListener("click", () => { if (controller) controller.abort(); });
})();
