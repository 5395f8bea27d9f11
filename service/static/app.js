// The search page: plain DOM code over the service's own REST API (same origin).
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const textInput = $("query-text");
const fileInput = $("query-file");
const dropZone = $("drop-zone");
const keyInput = $("api-key");
const kInput = $("k");
const results = $("results");
const detail = $("detail");
const MEDIA_ACCEPT = { image: "image/*", video: "video/*" };
const SECTION_NAMES = { image: "Images", video: "Clips", text: "Texts" };
// Sections in this order whatever the checkboxes' order: pictures first, then texts.
const SECTION_ORDER = ["image", "video", "text"];

let objectUrls = [];
let thumbUrls = new Map(); // item id -> blob: URL of its thumbnail, for the detail view
let searchSeq = 0;
let detailHit = null;
let detailOpener = null;

keyInput.value = sessionStorage.getItem("hashbridge-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("hashbridge-api-key", keyInput.value);
  loadStats();
});

function authHeaders() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

// A problem+json answer's detail (what to fix), or a plain description of the failure.
async function problemText(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return `${body.title || "Error"}: ${body.detail}`;
  } catch (_) {
    // not JSON: fall through
  }
  return `The service answered ${response.status} ${response.statusText}`;
}

// An error replaces the results: what is on screen must answer the query in the form.
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
  if (message) {
    clearResults();
    setStatus("");
  }
}

function setStatus(message) {
  $("status").textContent = message;
}

async function loadStats() {
  let response;
  try {
    response = await fetch("/v1/stats", { headers: authHeaders() });
  } catch (_) {
    $("summary").textContent = "The service cannot be reached.";
    return;
  }
  if (!response.ok) {
    const message = await problemText(response);
    $("summary").textContent = "Could not read the collection.";
    showError(message);
    if (response.status === 401 || response.status === 403) $("key-box").open = true;
    return;
  }
  showError("");
  const stats = await response.json();
  const counts = Object.entries(stats.by_modality).map(([m, n]) => `${n} ${m}`).join(", ");
  $("summary").textContent =
    `${stats.count} items (${counts || "none yet"}); ${stats.method}, ${stats.bits}-bit codes`;
  applyLimits(stats.limits);
  buildModalityChoices(stats.modalities);
  fileInput.accept = stats.modalities.filter((m) => MEDIA_ACCEPT[m]).map((m) => MEDIA_ACCEPT[m]).join(",");
}

// The form takes what this server takes (HASHBRIDGE_MAX_K, HASHBRIDGE_MAX_TEXT_CHARS).
function applyLimits(limits) {
  if (!limits) return;
  kInput.max = String(limits.max_k);
  if (Number(kInput.value) > limits.max_k) kInput.value = String(limits.max_k);
  textInput.maxLength = limits.max_text_chars;
}

function buildModalityChoices(modalities) {
  const box = $("modalities");
  const checked = new Set(checkedModalities());
  box.querySelectorAll("label").forEach((label) => label.remove());
  for (const modality of modalities) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = "modality";
    input.value = modality;
    input.checked = checked.size === 0 || checked.has(modality);
    label.append(input, ` ${modality === "video" ? "clips" : modality + "s"}`);
    box.append(label);
  }
}

function checkedModalities() {
  const boxes = [...document.querySelectorAll("input[name=modality]:checked")].map((b) => b.value);
  return SECTION_ORDER.filter((m) => boxes.includes(m)).concat(
    boxes.filter((m) => !SECTION_ORDER.includes(m)),
  );
}

function currentFile() {
  return fileInput.files && fileInput.files.length ? fileInput.files[0] : null;
}

function showFileQuery() {
  const file = currentFile();
  const box = $("file-query");
  box.hidden = !file;
  if (!file) return;
  $("file-name").textContent = file.name;
  const preview = $("file-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.alt = `Query image ${file.name}`;
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
}

function readK() {
  const k = Number(kInput.value);
  const max = Number(kInput.max) || 1000;
  if (!Number.isInteger(k) || k < 1 || k > max) {
    showError(`Results of each kind must be a whole number from 1 to ${max}.`);
    return null;
  }
  return k;
}

async function search() {
  showError("");
  const modalities = checkedModalities();
  if (!modalities.length) {
    showError("Pick at least one kind of result to return.");
    return;
  }
  const k = readK();
  if (k === null) return;
  const file = currentFile();
  const text = textInput.value.trim();
  if (!file && !text) {
    showError("Type a query or choose a file to search with.");
    return;
  }
  const query = file ? { file } : { text };
  await runSearch(query, modalities, k, file ? `Searching by ${file.name}…` : `Searching for “${text}”…`);
}

// One request per kind of result, so each section has its own top k: the first sends the
// query itself, the others its code (the query is encoded once).
async function runSearch(query, modalities, k, pending, title = "") {
  const seq = ++searchSeq;
  setStatus(pending);
  const sections = [];
  let first;
  try {
    first = await searchOnce(query, modalities[0], k);
    if (seq !== searchSeq) return;
    sections.push([modalities[0], first.results]);
    const rest = await Promise.all(
      modalities.slice(1).map((m) => searchOnce({ code: first.query.code }, m, k)),
    );
    if (seq !== searchSeq) return;
    rest.forEach((answer, i) => sections.push([modalities[i + 1], answer.results]));
  } catch (error) {
    if (seq !== searchSeq) return; // a newer search started meanwhile
    showError(error.message);
    return;
  }
  render(sections);
  const total = sections.reduce((n, [, hits]) => n + hits.length, 0);
  const unknown = first.query.known_tokens === 0 ? " (none of its words are known to the model)" : "";
  const counts = sections.map(([m, hits]) => `${SECTION_NAMES[m] || m} ${hits.length}`).join(" · ");
  setStatus(`${title}${counts}${unknown}: ${total} results`);
}

async function searchOnce(query, modality, k) {
  let init;
  if (query.file) {
    const body = new FormData();
    body.append("file", query.file, query.file.name);
    body.append("k", String(k));
    body.append("modalities", modality);
    init = { method: "POST", body, headers: authHeaders() };
  } else {
    init = {
      method: "POST",
      body: JSON.stringify({ ...query, k, modalities: [modality] }),
      headers: { "Content-Type": "application/json", ...authHeaders() },
    };
  }
  let response;
  try {
    response = await fetch("/v1/search", init);
  } catch (_) {
    throw new Error("The service cannot be reached; is it still running?");
  }
  if (!response.ok) throw new Error(await problemText(response));
  return response.json();
}

function clearResults() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  thumbUrls = new Map();
  results.replaceChildren();
}

function render(sections) {
  clearResults();
  results.replaceChildren(...sections.map(([modality, hits]) => section(modality, hits)));
}

function section(modality, hits) {
  const box = document.createElement("section");
  box.className = "section";
  box.dataset.modality = modality;
  const heading = document.createElement("h2");
  heading.id = `section-${modality}`;
  heading.textContent = `${SECTION_NAMES[modality] || modality} `;
  const count = document.createElement("span");
  count.className = "count muted";
  count.textContent = `(${hits.length})`;
  heading.append(count);
  box.setAttribute("aria-labelledby", heading.id);
  const list = document.createElement("ol");
  list.className = "grid";
  list.replaceChildren(...hits.map(tile));
  box.append(heading);
  if (hits.length) {
    box.append(list);
  } else {
    const none = document.createElement("p");
    none.className = "muted none";
    none.textContent = "Nothing of this kind is stored yet.";
    box.append(none);
  }
  return box;
}

function displayName(hit) {
  return hit.metadata.filename || hit.client_id || `#${hit.id}`;
}

function tile(hit) {
  const item = document.createElement("li");
  item.className = `tile ${hit.modality}`;
  item.dataset.id = hit.id;
  item.dataset.modality = hit.modality;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  const name = hit.modality === "text" ? hit.client_id || `#${hit.id}` : displayName(hit);
  open.setAttribute("aria-label", `Details of ${hit.modality === "video" ? "clip" : hit.modality} ${name}, distance ${hit.distance}`);
  if (hit.modality === "text") {
    const snippet = document.createElement("p");
    snippet.className = "snippet";
    snippet.textContent = hit.metadata.text || "";
    snippet.title = hit.metadata.text || "";
    open.append(snippet);
  } else {
    const figure = document.createElement("div");
    figure.className = "thumb";
    const img = document.createElement("img");
    img.alt = `${hit.modality === "video" ? "Clip" : "Image"} ${name}`;
    figure.append(img);
    if (hit.modality === "video") {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "clip";
      figure.append(badge);
    }
    open.append(figure);
    loadThumbnail(hit.id, img, figure);
  }
  const caption = document.createElement("span");
  caption.className = "caption";
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.dataset.distance = hit.distance;
  distance.textContent = `distance ${hit.distance}`;
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  label.title = name; // the whole name on hover; the tile shows as much as fits
  caption.append(distance, label);
  open.append(caption);
  open.addEventListener("click", () => openDetail(hit, open));
  item.append(open);
  return item;
}

async function loadThumbnail(id, img, figure) {
  try {
    const response = await fetch(`/v1/items/${id}/thumbnail`, { headers: authHeaders() });
    if (!response.ok) throw new Error(String(response.status));
    const url = URL.createObjectURL(await response.blob());
    objectUrls.push(url);
    thumbUrls.set(String(id), url);
    img.src = url;
  } catch (_) {
    figure.classList.add("missing");
    figure.dataset.note = "no preview";
  }
}

// ------------------------------------------------------------------ the detail view

async function openDetail(hit, opener) {
  detailHit = hit;
  detailOpener = opener;
  $("detail-title").textContent = hit.modality === "text" ? `Text #${hit.id}` : displayName(hit);
  const media = $("detail-media");
  media.replaceChildren();
  const url = thumbUrls.get(String(hit.id));
  if (hit.modality !== "text" && url) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = `${hit.modality === "video" ? "Poster of clip" : "Image"} ${displayName(hit)}`;
    media.append(img);
  }
  media.hidden = !media.children.length;
  const text = $("detail-text");
  text.textContent = hit.metadata.text || "";
  text.hidden = !hit.metadata.text;
  fillFields(hit, null);
  if (!detail.open) detail.showModal();
  $("more-like-this").focus();
  // The stored item adds its code and when it was written.
  try {
    const response = await fetch(`/v1/items/${hit.id}`, { headers: authHeaders() });
    if (!response.ok) throw new Error(await problemText(response));
    const item = await response.json();
    if (detailHit === hit) fillFields(hit, item);
  } catch (error) {
    if (detailHit === hit) fillFields(hit, null, error.message);
  }
}

function fillFields(hit, item, problem = "") {
  const metadata = item ? item.metadata : hit.metadata;
  const labels = Array.isArray(metadata.labels) ? metadata.labels : [];
  const labelList = $("detail-labels");
  labelList.replaceChildren(
    ...labels.map((name) => {
      const li = document.createElement("li");
      li.textContent = String(name);
      return li;
    }),
  );
  labelList.hidden = !labels.length;
  const rows = [
    ["id", String(hit.id)],
    ["client id", hit.client_id || "none"],
    ["kind", hit.modality === "video" ? "clip" : hit.modality],
    ["distance", String(hit.distance)],
    ["code", item ? item.code : problem || "loading…"],
  ];
  if (item) rows.push(["stored", new Date(item.created_at * 1000).toLocaleString()]);
  for (const [key, value] of Object.entries(metadata)) {
    if (key === "text" || key === "labels") continue;
    rows.push([key, typeof value === "string" ? value : JSON.stringify(value)]);
  }
  $("detail-fields").replaceChildren(
    ...rows.flatMap(([key, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.field = key;
      return [dt, dd];
    }),
  );
}

function closeDetail() {
  if (detail.open) detail.close();
}

detail.addEventListener("close", () => {
  if (detailOpener && detailOpener.isConnected) detailOpener.focus();
  detailHit = null;
});

// A click on the backdrop (outside the dialog's box) closes it, as Esc does.
detail.addEventListener("click", (event) => {
  if (event.target === detail) closeDetail();
});

$("detail-close").addEventListener("click", closeDetail);

$("more-like-this").addEventListener("click", async () => {
  const hit = detailHit;
  if (!hit) return;
  const code = $("detail-fields").querySelector("[data-field=code]").textContent;
  closeDetail();
  showError("");
  const modalities = checkedModalities();
  const k = readK();
  if (!modalities.length || k === null || !/^[0-9a-f]+$/.test(code)) {
    if (!modalities.length) showError("Pick at least one kind of result to return.");
    return;
  }
  textInput.value = "";
  clearFile();
  const name = hit.modality === "text" ? `#${hit.id}` : displayName(hit);
  await runSearch({ code }, modalities, k, `Finding items like ${name}…`, `Like ${name}: `);
});

// ------------------------------------------------------------------ the query form

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});

textInput.addEventListener("input", () => {
  if (textInput.value && currentFile()) clearFile();
});

fileInput.addEventListener("change", () => {
  if (!currentFile()) return;
  textInput.value = "";
  showFileQuery();
  search();
});

function clearFile() {
  fileInput.value = "";
  showFileQuery();
}

$("clear-file").addEventListener("click", clearFile);

for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("over"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  const files = event.dataTransfer && event.dataTransfer.files;
  if (!files || !files.length) return;
  fileInput.files = files;
  fileInput.dispatchEvent(new Event("change"));
});

loadStats();
