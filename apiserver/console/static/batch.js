// Many photos (or a folder) as one DepthBatch, and paging through a batch's depth previews.
// Everything goes through the public REST API: signed upload forms (POST /v1/uploads) straight to
// the object store, then POST /v1/depth-batches with one input per uploaded file (one unit each).
import { ApiError, json } from "./api.js";
import { h } from "./dom.js";

const FORMATS = ["png16", "npy", "preview"];
const MAX_FILES = 1000; // what one POST /v1/uploads accepts
const PARALLEL = 4;
const PAGE_SIZES = [2, 6, 12, 24];
const IMAGE_NAME = /\.(jpe?g|png|webp|tiff?|heic|heif|avif|bmp)$/i;

/** Image files only: a folder brings along whatever else is in it. */
export const isImage = (file) => file.type.startsWith("image/") || IMAGE_NAME.test(file.name);

/** Names the upload form accepts ([A-Za-z0-9][A-Za-z0-9._-]*), unique in the batch (a folder's
 * sub-folders may repeat a name; their path becomes part of it). */
export function uploadNames(files) {
  const taken = new Set();
  return files.map((file) => {
    const base = (file.webkitRelativePath || file.name).replace(/[^A-Za-z0-9._-]+/g, "-")
      .replace(/^[^A-Za-z0-9]+/, "").slice(-180) || "image";
    let name = base;
    for (let i = 2; taken.has(name); i += 1) name = `${i}-${base}`;
    taken.add(name);
    return name;
  });
}

/** The object store's refusal, one line (its XML <Message>, else the status). */
async function storeFailure(response, name) {
  const text = await response.text().catch(() => "");
  const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1];
  return new ApiError(response.status, "upload_failed", `the object store refused ${name}: ${message || `${response.status} ${response.statusText}`}`);
}

async function send(target, file) {
  const form = new FormData();
  for (const [k, v] of Object.entries(target.fields || {})) form.append(k, v);
  form.append("file", file, target.name);
  let response;
  try {
    response = await fetch(target.url, { method: target.method || "POST", body: form, headers: target.headers || {}, credentials: "omit" });
  } catch {
    throw new ApiError(0, "network", `the object store could not be reached to upload ${target.name}; check your connection and retry`);
  }
  if (!response.ok) throw await storeFailure(response, target.name);
}

/** Upload `files` and submit them as one DepthBatch; `onStatus` hears each step. Returns the job. */
export async function submitBatch(files, { gpus = 1, onStatus = () => {} } = {}) {
  if (!files.length) throw new ApiError(0, "no_images", "choose at least one image (JPEG, PNG, WebP, TIFF, HEIC or AVIF)");
  if (files.length > MAX_FILES) throw new ApiError(0, "too_many", `${files.length} images chosen; the console sends at most ${MAX_FILES} per batch`);
  const names = uploadNames(files);
  const upload = await json("/v1/uploads", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ files: files.map((f, i) => ({ name: names[i], content_type: f.type || null })) }),
  });
  const big = files.find((f) => f.size > upload.max_bytes);
  if (big) throw new ApiError(413, "upload_too_large", `${big.name} is ${big.size} bytes; uploads take at most ${upload.max_bytes}`);
  let sent = 0;
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      await send(upload.files[i], files[i]);
      sent += 1;
      onStatus(`Uploaded ${sent} of ${files.length}…`);
    }
  };
  onStatus(`Uploading ${files.length} image(s)…`);
  await Promise.all(Array.from({ length: Math.min(PARALLEL, files.length) }, worker));
  onStatus("Submitting the batch…");
  const spec = {
    inputs: upload.files.map((t) => t.uri),
    output: { uri: `${upload.prefix.split("/inputs/")[0]}/results`, formats: FORMATS },
    placement: { gpus },
  };
  return json("/v1/depth-batches", {
    method: "POST", headers: { "Content-Type": "application/json", "Idempotency-Key": `console-${upload.id}` },
    body: JSON.stringify(spec),
  });
}

/** The batch section of the Depth view: choose or drop images (or a folder), submit, then `onSubmitted(job)`. */
export function batchForm({ onSubmitted, onError }) {
  let chosen = [];
  const many = h("input", { type: "file", id: "batch-photos", multiple: true, accept: "image/*,.heic,.heif,.avif" });
  const folder = h("input", { type: "file", id: "batch-folder", webkitdirectory: true });
  const gpus = h("select", { id: "batch-gpus" }, h("option", { value: "1" }, "1 GPU per pod"), h("option", { value: "0" }, "CPU only (for trials)"));
  const submit = h("button", { type: "submit", id: "batch-submit", disabled: true }, "Submit as a DepthBatch");
  const status = h("p", { id: "batch-status", class: "muted", "aria-live": "polite" },
    "One unit per image; previews, 16-bit PNG and NPY depth are written for each.");
  const pick = (files) => {
    const all = Array.from(files || []);
    chosen = all.filter(isImage);
    const left = all.length - chosen.length;
    status.textContent = `${chosen.length} image(s) chosen${left ? `; ${left} other file(s) left out` : ""}.`;
    status.dataset.chosen = chosen.length;
    submit.disabled = !chosen.length;
  };
  many.addEventListener("change", () => pick(many.files));
  folder.addEventListener("change", () => pick(folder.files));
  const drop = h("div", { class: "drop", id: "batch-drop" },
    h("p", {}, h("label", { for: "batch-photos" }, "Choose images or drop them here "), many),
    h("p", {}, h("label", { for: "batch-folder" }, "…or a folder "), folder),
    h("p", {}, h("label", { for: "batch-gpus" }, "Run on "), gpus, " ", submit));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); });
  const form = h("form", { id: "batch-form" }, drop, status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const job = await submitBatch(chosen, { gpus: Number(gpus.value), onStatus: (s) => { status.textContent = s; } });
      status.textContent = `Submitted ${job.id} (${chosen.length} image(s)).`;
      onSubmitted(job);
    } catch (err) {
      status.textContent = "Not submitted.";
      submit.disabled = false;
      onError(err);
    }
  });
  return h("section", { "aria-labelledby": "batch-h" }, h("h2", { id: "batch-h" }, "Many photos: a DepthBatch"), form);
}

const stemOf = (key) => key.replace(/\.preview\.jpg$/, "");

/** A finished DepthBatch's previews from its result listing, `perPage` at a time; null when it has none. */
export function previewPager(files, perPage = 12) {
  const previews = files.filter((f) => f.key.endsWith(".preview.jpg")).sort((a, b) => a.key.localeCompare(b.key));
  if (!previews.length) return null;
  const byKey = new Map(files.map((f) => [f.key, f]));
  let page = 0;
  let size = PAGE_SIZES.includes(perPage) ? perPage : 12;
  const grid = h("div", { class: "previews", id: "previews" });
  const where = h("p", { id: "preview-page", "aria-live": "polite" });
  const prev = h("button", { type: "button", id: "preview-prev" }, "Previous");
  const next = h("button", { type: "button", id: "preview-next" }, "Next");
  const sizes = h("select", { id: "preview-size" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === size }, `${n}`)));
  const pages = () => Math.ceil(previews.length / size);
  const show = () => {
    const from = page * size;
    const shown = previews.slice(from, from + size);
    grid.replaceChildren(...shown.map((f) => {
      const stem = stemOf(f.key);
      const raw = [["16-bit PNG", `${stem}.depth.png`], ["NPY", `${stem}.depth.npy`]].filter(([, k]) => byKey.has(k));
      return h("figure", { class: "preview", "data-key": f.key },
        h("img", { src: f.url, alt: `Depth preview of ${stem.split("/").pop()} (bright is near)`, referrerpolicy: "no-referrer", loading: "eager" }),
        h("figcaption", {}, stem.split("/").pop(), raw.length ? " · " : "",
          raw.flatMap(([label, k], i) => [i ? " · " : "", h("a", { href: byKey.get(k).url, download: k.split("/").pop(), rel: "noopener noreferrer" }, label)])));
    }));
    where.textContent = `Page ${page + 1} of ${pages()}: previews ${from + 1}–${from + shown.length} of ${previews.length}`;
    Object.assign(where.dataset, { page: page + 1, pages: pages(), shown: shown.length });
    prev.disabled = page === 0;
    next.disabled = page >= pages() - 1;
  };
  prev.addEventListener("click", () => { page = Math.max(0, page - 1); show(); });
  next.addEventListener("click", () => { page = Math.min(pages() - 1, page + 1); show(); });
  sizes.addEventListener("change", () => { size = Number(sizes.value); page = 0; show(); });
  show();
  return h("section", { "aria-labelledby": "previews-h" }, h("h2", { id: "previews-h" }, "Depth previews"),
    h("p", {}, prev, " ", next, " ", h("label", { for: "preview-size" }, "Per page "), sizes), where, grid);
}
