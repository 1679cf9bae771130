// minicloud console: keeps the page's <main> current. It follows the watch of every object
// from the revision the page was read at; when a change concerns what the page shows, it
// fetches the page again as a fragment (?fragment=1) and swaps it in. A dropped watch is
// resumed from the last revision seen, after a pause that grows to 5 s. For pages that show
// events, the watch also says when the events head moves (EVENTS lines).

const body = document.body;
const main = document.getElementById("main");
const live = document.getElementById("live");
const scope = body.dataset.watch; // "*", "Kind" or "Kind/namespace/name"
let revision = body.dataset.revision;
// Pages that show events: the events head they were read at (the watch says when it moves).
let eventsHead = body.dataset.eventsHead;
let refreshTimer = null;

// Streams (the watch, followed logs) are ended when the page goes: a browser may otherwise
// keep their connections open after leaving, and it allows only six per server, so a few
// quick clicks would leave the next page without a connection for its own requests.
// A page brought back from the browser's back/forward cache reads itself again.
const leaving = new AbortController();
window.addEventListener("pagehide", () => leaving.abort());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

function concerns(object) {
  if (scope === "*") return true;
  const [kind, namespace, name] = scope.split("/");
  if (object.kind !== kind && kind !== undefined) return false;
  if (name === undefined) return true;
  const meta = object.metadata || {};
  return meta.namespace === namespace && meta.name === name;
}

// A form in main that the user is filling in (typed into, or focused) is not swapped away:
// the refresh waits until it is left alone.
function editing() {
  const active = document.activeElement;
  if (active && active !== document.body && main.contains(active) && active.closest("form")) return true;
  return main.querySelector("form[data-edited]") !== null;
}
main.addEventListener("input", (event) => {
  const form = event.target.closest && event.target.closest("form");
  if (form) form.dataset.edited = "1";
});

async function refresh() {
  refreshTimer = null;
  if (editing()) {
    refreshTimer = setTimeout(refresh, 1000);
    return;
  }
  try {
    const url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    const response = await fetch(url, { cache: "no-store" });
    if (response.ok) {
      main.innerHTML = await response.text();
    } else if (response.status === 404) {
      main.innerHTML = "<h1>Gone</h1><p>This object was deleted.</p>";
    }
    body.dataset.refreshed = String(Date.now());
  } catch (error) {
    // Aborted (the server restarting, the browser seeing the host's network change): try
    // again shortly, so the page does not stay stale when no further change comes.
    setTimeout(scheduleRefresh, 1000);
  }
}

function scheduleRefresh() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 50);
}

function handle(line) {
  if (!line.trim()) return;
  const event = JSON.parse(line);
  const object = event.object || {};
  if (event.type === "EVENTS") {
    eventsHead = event.head;
    scheduleRefresh();
    return;
  }
  if (event.type === "ERROR") {
    // Our revision was compacted away: read everything again.
    if (object.code === 410) location.reload();
    return;
  }
  const version = object.metadata && object.metadata.resourceVersion;
  if (version) revision = version;
  if (event.type !== "BOOKMARK" && concerns(object)) scheduleRefresh();
}

async function follow() {
  let pause = 500;
  for (;;) {
    try {
      let url = `/ui/watch?resourceVersion=${encodeURIComponent(revision)}&heartbeatSeconds=5`;
      if (eventsHead !== undefined) url += `&eventsHead=${encodeURIComponent(eventsHead)}`;
      const response = await fetch(url, { cache: "no-store", signal: leaving.signal });
      if (!response.ok) throw new Error(`watch answered ${response.status}`);
      live.textContent = "live";
      live.className = "live on";
      pause = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n")) >= 0) {
          handle(buffered.slice(0, end));
          buffered = buffered.slice(end + 1);
        }
      }
    } catch (error) {
      // The server went away or restarts: try again below.
    }
    if (leaving.signal.aborted) return;
    live.textContent = "reconnecting…";
    live.className = "live off";
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 5000);
    scheduleRefresh();
  }
}

// Pages that follow nothing (a problem, a confirmation) have no data-watch.
if (scope) follow();

// An Instance's container output: the last lines, then followed; at most MAX_LOG_LINES kept.
const MAX_LOG_LINES = 2000;
const logs = document.getElementById("logs");

async function followLogs() {
  for (;;) {
    // Until the Instance reports a container there is no output to read (the page's main,
    // kept current, says when there is).
    if (!document.getElementById("has-container")) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      continue;
    }
    try {
      const response = await fetch(logs.dataset.source, { cache: "no-store", signal: leaving.signal });
      if (response.ok) {
        logs.textContent = "";
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          logs.textContent += decoder.decode(value, { stream: true });
          const lines = logs.textContent.split("\n");
          if (lines.length > MAX_LOG_LINES) logs.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
          logs.scrollTop = logs.scrollHeight;
        }
      }
    } catch (error) {
      // The container is being replaced or the server restarts: read again below.
    }
    if (leaving.signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

if (logs && logs.dataset.source) followLogs();

// Charts: newer samples arrive without any object changing, so a page with charts asks for
// itself again at the sampling interval.
setInterval(() => {
  const charts = document.querySelector("[data-chart]");
  if (charts) scheduleRefresh();
}, 1000 * Number((document.querySelector("[data-chart]") || { dataset: { chart: 5 } }).dataset.chart || 5));
