// spanlake web UI: what every page shares. Plain JavaScript, no library.
"use strict";

const spanlake = {
  /** A duration in ns for people: 830 ns, 12.3 µs, 4.56 ms, 1.23 s, 2 min 3 s. */
  duration(ns) {
    if (ns === null || ns === undefined) return "";
    const units = [[1e3, "ns", 1], [1e6, "µs", 1e3], [1e9, "ms", 1e6], [60e9, "s", 1e9]];
    for (const [limit, unit, scale] of units) {
      if (Math.abs(ns) < limit) return `${(ns / scale).toPrecision(3).replace(/\.?0+$/, "")} ${unit}`;
    }
    const s = Math.floor(ns / 1e9);
    return s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
  },
  /** A 64-bit id given in decimal (signed, as the views keep it) as its 16 hex digits, W3C's form. */
  hex64(decimal) {
    return BigInt.asUintN(64, BigInt(decimal)).toString(16).padStart(16, "0");
  },
  /** An element with attributes and children (strings become text nodes: never HTML). */
  el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value; // through the CSSOM: CSP refuses style attributes
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== null && value !== undefined) node.setAttribute(key, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  },
  /** The JSON of a response, or an Error carrying the server's own wording. */
  async json(response) {
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: the text is the message */ }
    if (!response.ok) throw new Error((body && body.error) || text || `HTTP ${response.status}`);
    return body;
  },
  /** A fetch whose network failure reads as a sentence; it sends the page's CSRF token (checked on POSTs). */
  async fetch(url, options = {}) {
    const token = document.querySelector("meta[name=csrf-token]").content;
    try {
      return await fetch(url, { ...options, headers: { ...options.headers, "X-CSRF-Token": token } });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error("the spanlake server is not answering (is it running?)");
    }
  },
};

// Indents written as data (the slow query tree): CSP refuses style attributes in the markup.
document.addEventListener("DOMContentLoaded", () => {
  for (const node of document.querySelectorAll("[data-indent-em]")) node.style.paddingLeft = `${node.dataset.indentEm}em`;
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const text = button.dataset.copy;
  const done = () => { button.textContent = "✓"; setTimeout(() => { button.textContent = "⧉"; }, 1200); };
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
  else done();
});
