// taskman UI: refresh the live parts of a page without reloading it.
// An element with data-poll="<url>" is replaced every data-every ms by the HTML
// fragment at that URL (rendered and escaped by the server). A fragment that
// contains [data-final] (a finished task) stops its polling.
"use strict";

function poll(region) {
  const every = Number(region.dataset.every || 1000);
  let timer = null;
  async function tick() {
    if (region.querySelector("[data-final]")) return;
    if (document.hidden) { timer = setTimeout(tick, every); return; }
    try {
      const response = await fetch(region.dataset.poll, {
        credentials: "same-origin",
        headers: { "X-Requested-With": "taskman-ui" },
      });
      if (response.ok) {
        const open = new Set(
          [...region.querySelectorAll("details[open]")].map((d) => d.closest("[id]")?.id),
        );
        region.innerHTML = await response.text();
        // Keep the tracebacks and outputs the operator opened.
        region.querySelectorAll("details").forEach((d) => {
          if (open.has(d.closest("[id]")?.id)) d.open = true;
        });
        region.dataset.updated = String(Date.now());
      }
    } catch (err) {
      // The server may be restarting: try again on the next tick.
    }
    timer = setTimeout(tick, every);
  }
  timer = setTimeout(tick, every);
  return () => clearTimeout(timer);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
});
