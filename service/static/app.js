// The search page: plain DOM code over the service's own REST API (same origin).
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const textInput = $("query-text");
const fileInput = $("query-file");
const dropZone = $("drop-zone");
const keyInput = $("api-key");
const results = $("results");
const MEDIA_ACCEPT = { image: "image/*", video: "video/*" };

let objectUrls = [];
let searchSeq = 0;

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

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
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
  buildModalityChoices(stats.modalities);
  fileInput.accept = stats.modalities.filter((m) => MEDIA_ACCEPT[m]).map((m) => MEDIA_ACCEPT[m]).join(",");
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
  return [...document.querySelectorAll("input[name=modality]:checked")].map((b) => b.value);
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

async function search() {
  showError("");
  const modalities = checkedModalities();
  if (!modalities.length) {
    showError("Pick at least one kind of result to return.");
    return;
  }
  const k = Number($("k").value) || 10;
  const file = currentFile();
  const text = textInput.value.trim();
  if (!file && !text) {
    showError("Type a query or choose a file to search with.");
    return;
  }
  let init;
  if (file) {
    const body = new FormData();
    body.append("file", file, file.name);
    body.append("k", String(k));
    body.append("modalities", modalities.join(","));
    init = { method: "POST", body, headers: authHeaders() };
  } else {
    init = {
      method: "POST",
      body: JSON.stringify({ text, k, modalities }),
      headers: { "Content-Type": "application/json", ...authHeaders() },
    };
  }
  const seq = ++searchSeq;
  setStatus(file ? `Searching by ${file.name}…` : `Searching for “${text}”…`);
  let response;
  try {
    response = await fetch("/v1/search", init);
  } catch (_) {
    setStatus("");
    showError("The service cannot be reached; is it still running?");
    return;
  }
  if (seq !== searchSeq) return; // a newer search started meanwhile
  if (!response.ok) {
    setStatus("");
    showError(await problemText(response));
    return;
  }
  const answer = await response.json();
  render(answer.results);
  const unknown = answer.query.known_tokens === 0 ? " (none of its words are known to the model)" : "";
  setStatus(`${answer.results.length} results${unknown}`);
}

function render(hits) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  results.replaceChildren(...hits.map(tile));
}

function tile(hit) {
  const item = document.createElement("li");
  item.className = `tile ${hit.modality}`;
  item.dataset.id = hit.id;
  item.dataset.modality = hit.modality;
  const name = hit.metadata.filename || hit.client_id || `#${hit.id}`;
  if (hit.modality === "text") {
    const snippet = document.createElement("p");
    snippet.className = "snippet";
    snippet.textContent = hit.metadata.text || "";
    item.append(snippet);
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
    item.append(figure);
    loadThumbnail(hit.id, img, figure);
  }
  const caption = document.createElement("p");
  caption.className = "caption";
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.dataset.distance = hit.distance;
  distance.textContent = `distance ${hit.distance}`;
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = hit.modality === "text" ? hit.client_id || `#${hit.id}` : name;
  caption.append(distance, label);
  item.append(caption);
  return item;
}

async function loadThumbnail(id, img, figure) {
  try {
    const response = await fetch(`/v1/items/${id}/thumbnail`, { headers: authHeaders() });
    if (!response.ok) throw new Error(String(response.status));
    const url = URL.createObjectURL(await response.blob());
    objectUrls.push(url);
    img.src = url;
  } catch (_) {
    figure.classList.add("missing");
    figure.dataset.note = "no preview";
  }
}

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
