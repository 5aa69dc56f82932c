// Live updates for the Bastion page: whenever the event stream says something changed (here, in
// the CLI, in a gateway), re-fetch the table fragment. The page works without this script.
(() => {
  "use strict";
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!live || !window.EventSource || !window.fetch) return;
  let timer = null;
  let latest = 0;
  let shown = 0;

  async function refresh() {
    timer = null;
    const mine = ++latest;
    try {
      const response = await fetch(live.dataset.fragment, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) return;
      const html = await response.text();
      if (mine < shown) return; // a later refresh already landed
      shown = mine;
      live.innerHTML = html;
      live.dataset.refreshes = String(Number(live.dataset.refreshes || "0") + 1);
    } catch (_) {
      // the next event or reconnection tries again
    }
  }

  function schedule() {
    if (timer === null) timer = setTimeout(refresh, 50);
  }

  const events = new EventSource(live.dataset.events);
  events.addEventListener("open", () => {
    status.textContent = "Live: changes appear by themselves.";
    schedule(); // whatever changed while disconnected
  });
  events.addEventListener("change", schedule);
  events.addEventListener("error", () => {
    status.textContent = "Reconnecting…";
  });
  setInterval(schedule, 30000); // keeps the relative expiry times current
})();
