// The search page: POST /v1/search, then draw the ranked passages. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const keyStore = "qwen3-rag-api-key";

async function showCollection() {
  try {
    const health = await (await fetch("/health")).json();
    if (health.collection) $("collection").textContent = "· " + health.collection;
  } catch (e) { /* the search itself reports problems */ }
}

function resultItem(r) {
  const li = document.createElement("li");
  li.className = "result";
  const head = document.createElement("div");
  head.className = "head";
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = (100 * r.score).toFixed(1) + "%";
  bar.appendChild(fill);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = r.score.toFixed(4);
  const source = document.createElement("span");
  source.className = "source";
  const page = r.metadata && r.metadata.page ? " (page " + r.metadata.page + ")" : "";
  source.textContent = (r.source || r.id) + page;
  head.append(bar, score, source);
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = r.text;  // textContent: passages are shown, never parsed as HTML
  li.append(head, text);
  return li;
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const key = $("api_key").value.trim();
  if (key) sessionStorage.setItem(keyStore, key);
  const body = { query, k: Number($("k").value), top_n: Number($("top_n").value) };
  const instruction = $("instruction").value.trim();
  if (instruction) body.instruction = instruction;
  $("status").textContent = "Searching…";
  $("results").replaceChildren();
  const started = performance.now();
  try {
    const headers = { "Content-Type": "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch("/v1/search", { method: "POST", headers, body: JSON.stringify(body) });
    const data = await response.json();
    if (!response.ok) {
      if (response.status === 401) $("search").querySelector("details").open = true;
      $("status").textContent = "Error " + response.status + ": " + (data.message || JSON.stringify(data));
      return;
    }
    const ms = Math.round(performance.now() - started);
    $("status").textContent = data.results.length
      ? data.results.length + " results in " + ms + " ms"
      : "No results: is the collection empty?";
    $("results").replaceChildren(...data.results.map(resultItem));
  } catch (e) {
    $("status").textContent = "The server did not answer: " + e;
  }
}

$("api_key").value = sessionStorage.getItem(keyStore) || "";
$("search").addEventListener("submit", search);
showCollection();
