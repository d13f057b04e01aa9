// The console: hash routes (#/jobs, #/jobs/<id>, #/depth, #/usage) over the public REST API.
import { ApiError, call, json, key } from "./api.js";
import { batchForm, previewPager } from "./batch.js";
import { decode, paint, pixelAt } from "./depthmap.js";
import { h } from "./dom.js";
import { locate, marks, planSummary, show3d } from "./viewer.js";

const POLL_MS = 2000;
const TERMINAL = new Set(["Succeeded", "Failed", "Cancelled"]);
const view = document.getElementById("view");
const errorLine = document.getElementById("error");
let stopPolling = () => {};
let closeViewer = () => {};

function showError(err) {
  if (err instanceof ApiError && err.status === 401 && key.get()) {
    // The stored key stopped working (revoked, rotated): back to the key form, with the reason.
    key.clear();
    route();
  }
  if (!err) {
    errorLine.hidden = true;
    errorLine.textContent = "";
    return;
  }
  errorLine.textContent = err instanceof ApiError ? err.message : `the console failed: ${err.message}`;
  errorLine.dataset.code = err.code || "console";
  errorLine.hidden = false;
}

function render(title, ...children) {
  view.replaceChildren(h("h1", {}, title), ...children);
  document.title = `${title} · SpatialForge console`;
}

const fmtSeconds = (s) => (s == null ? "—" : s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);

/** ETA: the API's estimated start while queued; while running, the rate so far. */
function eta(job) {
  if (TERMINAL.has(job.phase)) return "—";
  if (job.estimated_start_time) return `starts ~${new Date(job.estimated_start_time).toLocaleTimeString()}`;
  const { done, total } = job.progress || {};
  if (job.started_at && done > 0 && total > done) {
    const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
    return `~${fmtSeconds((elapsed / done) * (total - done))} left`;
  }
  return "—";
}

function progressCell(job) {
  const { done = 0, total = 0 } = job.progress || {};
  if (!total) return h("td", {}, "—");
  return h("td", {}, h("progress", { max: total, value: done, "aria-label": `${job.id} progress` }), ` ${done}/${total}`);
}

function jobRow(job) {
  return h("tr", { "data-job-id": job.id, "data-phase": job.phase },
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", {}, job.kind), h("td", { class: "phase" }, job.phase), progressCell(job), h("td", {}, eta(job)),
    h("td", { class: "units" }, job.units ?? "—"), h("td", {}, job.gpu_seconds == null ? "—" : job.gpu_seconds.toFixed(1)),
    h("td", {}, job.created_at ? new Date(job.created_at).toLocaleString() : "—"));
}

/** Call `tick` now and every POLL_MS until the view changes or it returns false. */
function poll(tick) {
  let timer = null;
  let live = true;
  const run = async () => {
    let again = true;
    try {
      again = (await tick()) !== false;
    } catch (err) {
      showError(err);
    }
    if (live && again) timer = setTimeout(run, POLL_MS);
  };
  stopPolling = () => {
    live = false;
    clearTimeout(timer);
  };
  run();
}

function jobsView() {
  const body = h("tbody");
  const count = h("p", { class: "muted", "aria-live": "polite" }, "Loading jobs…");
  const idInput = h("input", { id: "job-id", name: "job-id", required: true, autocomplete: "off" });
  const open = h("form", { onsubmit: (e) => { e.preventDefault(); location.hash = `#/jobs/${encodeURIComponent(idInput.value.trim())}`; } },
    h("label", { for: "job-id" }, "Open a job by id "), idInput, " ", h("button", { type: "submit" }, "Open"));
  render("Jobs", open, count, h("table", { id: "jobs" },
    h("caption", { class: "muted" }, "Your jobs, newest first; refreshed every 2 s"),
    h("thead", {}, h("tr", {}, ["Job", "Kind", "Phase", "Progress", "ETA", "Units", "GPU-seconds", "Created"].map((c) => h("th", { scope: "col" }, c)))),
    body));
  poll(async () => {
    const page = await json("/v1/jobs?limit=100");
    body.replaceChildren(...page.data.map(jobRow));
    count.textContent = page.count ? `${page.count} job(s)` : "No jobs yet: submit one through the API or the CLI.";
    if (!performance.getEntriesByName("jobs-list-ready", "mark").length) performance.mark("jobs-list-ready");  // first rows shown
    showError(null);
  });
}

function notFound(message) {
  render("Not found", h("p", { id: "not-found" }, message), h("p", {}, h("a", { href: "#/jobs" }, "Back to your jobs")));
}

function jobView(id) {
  const summary = h("dl");
  const history = h("tbody");
  const files = h("ul", { id: "files" });
  const outputs = h("div", { id: "outputs" });
  render(`Job ${id}`, summary, outputs,
    h("h2", {}, "Phase history"),
    h("table", { id: "conditions" }, h("thead", {}, h("tr", {}, ["Condition", "Status", "Reason", "Message"].map((c) => h("th", { scope: "col" }, c)))), history),
    h("h2", {}, "Files"), files);
  poll(async () => {
    let job;
    try {
      job = await json(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        notFound(err.message);
        return false;
      }
      throw err;
    }
    const { done = 0, total = 0, stage = "" } = job.progress || {};
    const rows = [["Kind", job.kind], ["Phase", job.phase], ["Reason", job.reason || "—"], ["Progress", total ? `${done}/${total} ${stage}` : "—"],
      ["ETA", eta(job)], ["Units", job.units ?? "—"], ["GPU-seconds", job.gpu_seconds ?? "—"], ["Attempts", job.attempts ?? "—"],
      ["Created", job.created_at || "—"], ["Completed", job.completed_at || "—"], ["Results expire", job.expires_at || "—"]];
    summary.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k.toLowerCase() }, v)]));
    history.replaceChildren(...job.conditions.map((c) => h("tr", {}, h("td", {}, c.type), h("td", {}, c.status), h("td", {}, c.reason), h("td", {}, c.message))));
    if (job.phase !== "Succeeded") {
      files.replaceChildren(h("li", { class: "muted" }, TERMINAL.has(job.phase) ? `No files: the job ${job.phase.toLowerCase()}.` : "Files appear when the job has succeeded."));
      return !TERMINAL.has(job.phase);
    }
    const results = await json(`/v1/jobs/${encodeURIComponent(id)}/results`);
    files.replaceChildren(...(results.files.length ? results.files.map((f) =>
      h("li", {}, h("a", { href: f.url, download: f.key.split("/").pop(), rel: "noopener noreferrer" }, f.key), ` (${f.size} bytes)`))
      : [h("li", { class: "muted" }, "The job wrote no files.")]));
    if (job.kind === "ReconstructionJob") await reconstructionOutputs(outputs, results.files);
    else outputs.replaceChildren(previewPager(results.files) ?? "");
    return false;
  });
}

/** The 3D panel (opened by a click: three.js loads then) and the floor plan beside it. */
async function reconstructionOutputs(slot, files) {
  const found = await locate(files);
  if (!found) return;
  const panels = h("div", { class: "panels" });
  slot.replaceChildren(panels);
  if (found.geometry) {
    const canvas = h("canvas", { id: "viewer-canvas", class: "viewer", role: "img", tabindex: "0",
      "aria-label": `3D view of ${found.geometry.key}; drag to orbit, scroll to zoom` });
    const status = h("p", { id: "viewer-status", class: "muted", "aria-live": "polite" },
      `${found.kind === "pointcloud" ? "Point cloud" : "Mesh"} ${found.geometry.key} (${found.geometry.size} bytes).`);
    const reset = h("button", { type: "button", id: "viewer-reset", disabled: true }, "Reset view");
    const open = h("button", { type: "button", id: "viewer-open" }, "Show in 3D");
    open.addEventListener("click", async () => {
      performance.clearMarks(marks.OPEN);
      performance.clearMarks(marks.FIRST_FRAME);
      performance.clearMeasures(marks.OPEN);
      performance.mark(marks.OPEN);
      open.disabled = true;
      canvas.hidden = false;
      status.textContent = `Loading ${found.geometry.key}…`;
      try {
        const view = await show3d(canvas, found.geometry, found.trajectory);
        closeViewer = view.dispose;
        reset.disabled = false;
        reset.addEventListener("click", view.reset);
        const took = performance.getEntriesByName(marks.OPEN, "measure")[0];
        status.textContent = `${found.geometry.key}: ${view.vertices} vertices${view.triangles ? `, ${view.triangles} triangles` : ""}`
          + `${view.path ? `, camera path of ${view.path} poses (magenta)` : ""}; drag to orbit, scroll to zoom`
          + `${took ? ` (shown in ${Math.round(took.duration)} ms)` : ""}.`;
        Object.assign(canvas.dataset, { ready: "true", vertices: view.vertices, triangles: view.triangles, path: view.path });
      } catch (err) {
        canvas.hidden = true;
        open.disabled = false;
        status.textContent = "No 3D view.";
        showError(err);
      }
    });
    canvas.hidden = true;
    panels.append(h("section", { class: "panel", "aria-labelledby": "viewer-h" }, h("h2", { id: "viewer-h" }, "3D"),
      h("p", {}, open, " ", reset), canvas, status));
  }
  if (found.plan) {
    const { rooms, total } = planSummary(found.manifest);
    const img = h("img", { id: "plan-img", class: "plan", src: found.plan.url, alt: `Floor plan: ${rooms.length} room(s)${total == null ? "" : `, ${total.toFixed(2)} m² in all`}`,
      referrerpolicy: "no-referrer" });
    const table = h("table", { id: "plan-areas" }, h("caption", { class: "muted" }, "Floor area by room (from the job's manifest)"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Room"), h("th", { scope: "col" }, "Area (m²)"))),
      h("tbody", {}, rooms.map((r) => h("tr", { "data-room": r.name }, h("td", {}, r.name), h("td", { "data-area": r.area }, r.area.toFixed(2))))),
      total == null ? null : h("tfoot", {}, h("tr", {}, h("th", { scope: "row" }, "Total"), h("td", { id: "plan-total", "data-area": total }, total.toFixed(2)))));
    panels.append(h("section", { class: "panel", "aria-labelledby": "plan-h" }, h("h2", { id: "plan-h" }, "Floor plan"),
      h("div", { class: "plan-frame" }, img), table));
  }
}

function depthView() {
  const input = h("input", { type: "file", id: "photo", accept: "image/*" });
  const drop = h("div", { class: "drop" }, h("label", { for: "photo" }, "Choose a photo or drop it here "), input);
  const status = h("p", { id: "depth-status", class: "muted", "aria-live": "polite" }, "Depth comes back at once (one unit); then hover the depth map, or click two points on the photo to measure (one unit).");
  const photo = h("img", { id: "photo-img", alt: "Your photo" });
  const overlay = h("canvas", { id: "measure-canvas", class: "overlay", role: "img", "aria-label": "Measurement points on the photo" });
  const depthCanvas = h("canvas", { id: "depth-canvas", role: "img", "aria-label": "Colour depth map: red is near, blue is far" });
  const hover = h("output", { id: "hover", for: "depth-canvas" }, "Hover the depth map to read metres.");
  const measured = h("output", { id: "measure", for: "measure-canvas" });
  const panels = h("div", { class: "panels", hidden: true },
    h("section", { class: "panel", "aria-labelledby": "photo-h" }, h("h2", { id: "photo-h" }, "Photo (click two points)"), h("div", { class: "stack" }, photo, overlay), h("p", {}, measured)),
    h("section", { class: "panel", "aria-labelledby": "depth-h" }, h("h2", { id: "depth-h" }, "Depth"), h("div", { class: "stack" }, depthCanvas), h("p", {}, hover)));
  const photoPanel = panels.firstElementChild;
  const note = h("p", { id: "photo-note", class: "muted", hidden: true });
  render("Depth and measure",
    batchForm({ onSubmitted: () => { showError(null); location.hash = "#/jobs"; }, onError: showError }),
    h("h2", {}, "One photo: depth at once"), drop, status, note, panels);

  let file = null;
  let map = null;
  let points = [];

  function drawPoints(result) {
    overlay.width = photo.naturalWidth;
    overlay.height = photo.naturalHeight;
    const ctx = overlay.getContext("2d");
    ctx.lineWidth = Math.max(2, photo.naturalWidth / 200);
    ctx.strokeStyle = ctx.fillStyle = "#ffeb3b";
    points.forEach((p) => { ctx.beginPath(); ctx.arc(p.x, p.y, ctx.lineWidth * 2, 0, 2 * Math.PI); ctx.fill(); });
    if (points.length === 2) {
      ctx.beginPath(); ctx.moveTo(points[0].x, points[0].y); ctx.lineTo(points[1].x, points[1].y); ctx.stroke();
    }
    if (result) {
      ctx.font = `${Math.max(12, photo.naturalWidth / 25)}px sans-serif`;
      ctx.fillText(`${result.distance_m.toFixed(2)} m`, (points[0].x + points[1].x) / 2, (points[0].y + points[1].y) / 2);
    }
  }

  async function measure() {
    const [a, b] = points;
    const form = new FormData();
    form.append("image", file);
    form.append("from", `${a.x},${a.y}`);
    form.append("to", `${b.x},${b.y}`);
    measured.textContent = "Measuring…";
    try {
      const r = await json("/v1/measure", { method: "POST", body: form });
      const [lo, hi] = r.interval_m;
      measured.textContent = `${r.distance_m.toFixed(3)} m (95 % interval ${lo.toFixed(3)}–${hi.toFixed(3)} m; focal length from ${r.focal_source})`;
      measured.dataset.distance = r.distance_m;
      measured.dataset.points = JSON.stringify({ from: `${a.x},${a.y}`, to: `${b.x},${b.y}` });
      drawPoints(r);
      showError(null);
    } catch (err) {
      measured.textContent = "";
      showError(err);
    }
  }

  overlay.addEventListener("click", (event) => {
    if (!file || !photo.naturalWidth) return;
    points = points.length >= 2 ? [] : points;
    points.push(pixelAt(event, overlay, photo.naturalWidth, photo.naturalHeight));
    drawPoints(null);
    if (points.length === 2) measure();
  });

  depthCanvas.addEventListener("mousemove", (event) => {
    if (!map) return;
    const { x, y } = pixelAt(event, depthCanvas, map.width, map.height);
    const d = map.at(x, y);
    hover.dataset.x = x;
    hover.dataset.y = y;
    hover.dataset.depth = d;
    hover.textContent = `pixel ${x}, ${y}: ${d.toFixed(3)} ${map.units === "metres" ? "m" : map.units}`;
  });

  async function choose(chosen) {
    if (!chosen) return;
    file = chosen;
    points = [];
    map = null;
    measured.textContent = "";
    status.textContent = `Estimating depth for ${chosen.name}…`;
    try {
      const response = await call("/v1/depth", { method: "POST", body: (() => { const f = new FormData(); f.append("image", chosen); return f; })(), accept: "application/octet-stream" });
      map = decode(await response.arrayBuffer(), response.headers.get("X-Depth-Shape"), response.headers.get("X-Depth-Dtype"));
      map.units = response.headers.get("X-Depth-Units") || "metres";
      paint(depthCanvas, map);
      URL.revokeObjectURL(photo.src);
      photo.src = URL.createObjectURL(chosen);
      // A photo this browser cannot show (HEIC in most): the depth still is; measuring needs the photo.
      const shown = await photo.decode().then(() => true, () => false);
      photoPanel.hidden = !shown;
      note.hidden = shown;
      note.textContent = shown ? "" : `This browser cannot display ${chosen.name}${chosen.type ? ` (${chosen.type})` : ""}, so only its depth is shown; measuring needs a photo the browser can show (convert it to JPEG).`;
      if (shown) drawPoints(null);
      panels.hidden = false;
      status.textContent = `Depth ${map.width}×${map.height}, ${map.min.toFixed(2)}–${map.max.toFixed(2)} ${map.units === "metres" ? "m" : map.units}, model ${response.headers.get("X-Depth-Model") || "?"}.`;
      status.dataset.ready = "true";
      showError(null);
    } catch (err) {
      panels.hidden = true;
      note.hidden = true;
      status.textContent = "No depth for this file.";
      showError(err);
    }
  }

  input.addEventListener("change", () => choose(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
}

function usageView() {
  const list = h("dl", { id: "usage" });
  render("Usage", list);
  poll(async () => {
    const [plan, usage] = await Promise.all([json("/v1/plan"), json("/v1/usage")]);
    const rows = [["Plan", plan.plan], ["Month", usage.month], ["Units used", usage.units_used], ["Units left", Math.max(0, usage.units_limit - usage.units_used)],
      ["Units this month", usage.units_limit], ["Per-minute limit", plan.rate_per_minute], ["Concurrent jobs", plan.concurrent_jobs],
      ["GPU-seconds", usage.gpu_seconds.toFixed(1)], ["Model sizes", plan.model_sizes.join(", ")]];
    list.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k.toLowerCase().replace(/ /g, "-") }, v)]));
    showError(null);
    return false;
  });
}

function keyView() {
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", { id: "key-form" },
    h("p", {}, "Paste your API key. It is kept in this tab only (sessionStorage) and sent in a header, never in a URL."),
    h("label", { for: "api-key" }, "API key "), input, " ", h("button", { type: "submit" }, "Use key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    try {
      await json("/v1/plan", { withKey: candidate });
    } catch (err) {
      showError(err);
      return;
    }
    key.set(candidate);
    showError(null);
    location.hash = "#/jobs";
    route();
  });
  render("Sign in", form);
}

function route() {
  stopPolling();
  closeViewer();
  closeViewer = () => {};
  const signedIn = Boolean(key.get());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) return keyView();
  const path = location.hash.replace(/^#/, "") || "/jobs";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#${path}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const job = path.match(/^\/jobs\/(.+)$/);
  if (job) return jobView(decodeURIComponent(job[1]));
  if (path === "/jobs") return jobsView();
  if (path === "/depth") return depthView();
  if (path === "/usage") return usageView();
  return notFound(`The console has no page ${path}.`);
}

document.getElementById("forget").addEventListener("click", () => {
  key.clear();
  showError(null);
  location.hash = "";
  route();
});
window.addEventListener("hashchange", () => { showError(null); route(); });
route();
