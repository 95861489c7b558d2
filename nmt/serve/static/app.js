// The page calls the same API as any client: GET /v1/models, POST /v1/translate. Text from the server is only
// ever set as textContent, never parsed as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { models: [], result: null, key: sessionStorage.getItem("nmt-api-key") || "" };

function setStatus(text, kind = "done") {
  const status = $("#status");
  status.textContent = text;
  status.dataset.state = kind;
}

async function api(path, body) {
  const headers = { "content-type": "application/json" };
  if (state.key) headers.authorization = "Bearer " + state.key;
  const options = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error ? data.error.message : response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function currentModel() {
  return state.models.find((m) => m.name === $("#model").value) || state.models[0];
}

function showModel() {
  const model = currentModel();
  if (!model) return;
  $("#languages").textContent = `${model.source_language} → ${model.target_language}, ` +
    `${(model.parameters / 1e6).toFixed(1)}M parameters, ${model.dtype} on ${model.device}`;
  $("#beam").placeholder = model.decode.beam;
}

async function loadModels() {
  try {
    const data = await api("/v1/models");
    state.models = data.models;
    const select = $("#model");
    select.replaceChildren(...data.models.map((m) => new Option(m.name, m.name)));
    $("#key-row").hidden = true;
    showModel();
    setStatus("", "idle");
  } catch (error) {
    if (error.status === 401) $("#key-row").hidden = false;
    setStatus(error.message, "error");
  }
}

function requestBody() {
  const model = currentModel();
  const lines = $("#source").value.replace(/\n+$/, "").split("\n");
  const body = { text: lines, model: model.name, alignments: model.attention };
  const beam = parseInt($("#beam").value, 10);
  const nbest = parseInt($("#nbest").value, 10);
  if (beam > 0) body.beam = beam;
  if (nbest > 1) body.nbest = nbest;
  return body;
}

async function translate() {
  if (!currentModel()) return loadModels();
  const button = $("#translate");
  button.disabled = true;
  setStatus("translating…", "busy");
  const start = performance.now();
  try {
    const body = requestBody();
    state.result = await api("/v1/translate", body);
    renderTranslations();
    const first = state.result.translations.findIndex((t) => t.alignment && t.alignment.source.length);
    showAttention(first);
    const ms = Math.round(performance.now() - start);
    setStatus(`${body.text.length} line${body.text.length === 1 ? "" : "s"} in ${ms} ms`);
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

function renderTranslations() {
  const list = $("#translations");
  list.replaceChildren(...state.result.translations.map((t, i) => {
    const item = document.createElement("li");
    item.classList.toggle("empty", t.text === "");
    item.append(span("text", t.text), span("score", t.text === "" ? "" : `score ${t.score.toFixed(3)}`));
    if (t.nbest.length > 1) item.append(nbestView(t.nbest));
    item.addEventListener("click", () => showAttention(i));
    return item;
  }));
}

function nbestView(hypotheses) {
  const details = document.createElement("details");
  details.className = "nbest";
  const summary = document.createElement("summary");
  summary.textContent = `${hypotheses.length} best`;
  const list = document.createElement("ol");
  for (const h of hypotheses) {
    const item = document.createElement("li");
    item.append(span("text", h.text), span("score", h.score.toFixed(3)));
    list.append(item);
  }
  details.append(summary, list);
  details.addEventListener("click", (event) => event.stopPropagation());
  return details;
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function cell(tag, text) {
  const element = document.createElement(tag);
  element.textContent = text;
  return element;
}

function showAttention(index) {
  const translation = state.result && state.result.translations[index];
  const alignment = translation && translation.alignment;
  $("#translations").querySelectorAll("li").forEach((li, i) => li.classList.toggle("chosen", i === index));
  if (!alignment || !alignment.source.length) {
    $("#attention").hidden = true;
    return;
  }
  const head = document.createElement("thead");
  const top = document.createElement("tr");
  top.append(cell("th", ""), ...alignment.source.map((piece) => cell("th", piece)));
  head.append(top);
  const body = document.createElement("tbody");
  alignment.target.forEach((piece, row) => {
    const tr = document.createElement("tr");
    tr.append(cell("th", piece));
    for (const weight of alignment.attention[row] || []) {
      const td = document.createElement("td");
      td.style.background = `rgba(36, 87, 197, ${Math.min(1, Math.max(0, weight)).toFixed(3)})`;
      td.title = weight.toFixed(3);
      tr.append(td);
    }
    body.append(tr);
  });
  $("#heatmap").replaceChildren(head, body);
  $("#attention-title").textContent = `of line ${index + 1}`;
  $("#attention").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#translate").addEventListener("click", translate);
  $("#source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      translate();
    }
  });
  $("#model").addEventListener("change", showModel);
  $("#use-key").addEventListener("click", () => {
    state.key = $("#api-key").value;
    sessionStorage.setItem("nmt-api-key", state.key);
    loadModels();
  });
  loadModels();
});
