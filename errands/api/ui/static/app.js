// Progressive enhancement, nothing more: the overview re-reads its live part
// every few seconds and swaps it in place, without a full reload. Every page
// works without this script.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  async function refresh() {
    try {
      const response = await fetch(live.dataset.src, { credentials: "same-origin" });
      if (response.redirected) {
        window.location.reload(); // the session ended: show the login page whole
        return;
      }
      if (response.ok && response.headers.get("content-type").startsWith("text/html")) {
        live.innerHTML = await response.text(); // server-rendered, escaped HTML
      }
    } catch (error) {
      // The server may be restarting: keep the last view, try again next tick.
    }
  }
  setInterval(refresh, 3000);
})();
