// The search page: POST /v1/search, then draw the ranked passages. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const keyStore = "qwen3-rag-api-key";

async function showCollection() {
  try {
    const health = await (await fetch("/health")).json();
    if (health.collection && health.collection !== "qwen3-rag") $("collection").textContent = "· " + health.collection;
  } catch (e) { /* the search itself reports problems */ }
}

// Absolute paths are shown relative to the folder all shown results share; URLs are links.
function isUrl(s) { return /^https?:\/\//i.test(s); }
function isAbsolute(s) { return s.startsWith("/"); }
function commonFolder(paths) {
  if (!paths.length) return "";
  let parts = paths[0].split("/").slice(0, -1);
  for (const p of paths.slice(1)) {
    const q = p.split("/");
    let i = 0;
    while (i < parts.length && i < q.length - 1 && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  return parts.length > 1 ? parts.join("/") + "/" : "";
}

function sourceNode(source, root) {
  if (isUrl(source)) {
    const a = document.createElement("a");
    a.href = source;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    a.textContent = source;
    return a;
  }
  const text = root && source.startsWith(root) ? source.slice(root.length) : source;
  return document.createTextNode(text);
}

function resultItem(r, root) {
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
  source.title = r.source || r.id;
  source.append(sourceNode(r.source || r.id, root), document.createTextNode(page));
  head.append(bar, score, source);
  const text = document.createElement("p");
  text.className = "text clipped";
  text.textContent = r.text;  // textContent: passages are shown, never parsed as HTML
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more";
  more.textContent = "Show more";
  more.hidden = true;
  more.addEventListener("click", () => {
    const open = text.classList.toggle("clipped") === false;
    more.textContent = open ? "Show less" : "Show more";
  });
  li.append(head, text, more);
  return li;
}

// After layout: the expand control only where the passage is longer than its clip.
function showMoreWhereClipped() {
  for (const li of document.querySelectorAll(".result")) {
    const text = li.querySelector(".text");
    li.querySelector(".more").hidden = text.scrollHeight <= text.clientHeight + 1;
  }
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
      if (response.status === 401) {
        $("search").querySelector("details").open = true;
        $("api_key").focus();
        $("status").textContent = "This server needs an API key: enter it under Options.";
        return;
      }
      $("status").textContent = "Error " + response.status + ": " + (data.message || JSON.stringify(data));
      return;
    }
    const ms = Math.round(performance.now() - started);
    $("status").textContent = data.results.length
      ? data.results.length + " results in " + ms + " ms"
      : "No results: is the collection empty?";
    const absolute = data.results.map((r) => r.source || "").filter((s) => isAbsolute(s));
    const root = commonFolder(absolute);
    $("results").replaceChildren(...data.results.map((r) => resultItem(r, root)));
    showMoreWhereClipped();
  } catch (e) {
    $("status").textContent = "The server did not answer: " + e;
  }
}

$("api_key").value = sessionStorage.getItem(keyStore) || "";
$("search").addEventListener("submit", search);
showCollection();
