// The chat page: talks to this server's /v1 API like any OpenAI client, one column per served model.
// Each answer streams in as server-sent events; with "show probabilities" on, every generated token shows
// the model's top candidates before (T = 1) and after temperature and top-p (what it was drawn from).
// Rating, ranking alternatives and picking the better of two answers live in feedback.js.
"use strict";

const $ = (id) => document.getElementById(id);
// maxTokens: the largest max_tokens this server takes (/v1/models says; a request above it is a 400).
const state = { models: [], columns: [], controllers: [], key: sessionStorage.getItem("apiKey") || "",
                maxTokens: Infinity };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: headers() });
    if (response.status !== 401) return response;
    const key = window.prompt("This server needs an API key:");
    if (!key) return response;
    state.key = key;
    sessionStorage.setItem("apiKey", key);
  }
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Whitespace made visible, so a candidate " the" differs from "the" on screen.
const showToken = (t) => t.replace(/ /g, "\u2423").replace(/\n/g, "\u23ce") || "\u2205";
const percent = (p) => (p >= 0.995 ? (100 * p).toFixed(0) : (100 * p).toFixed(1)) + "%";

function addColumn(name) {
  const column = el("section", "column");
  column.dataset.model = name;
  column.append(el("h2", "", name));
  const list = el("div", "messages");
  column.append(list);
  $("columns").append(column);
  state.columns.push({ name, list, history: [], answers: [] });
}

function tokenCard(candidates) {
  const card = el("div", "token");
  const picked = candidates.find((c) => c.picked);
  card.append(el("div", "picked-label", showToken(picked ? picked.token : "?")));
  for (const c of candidates) {
    const row = el("div", "cand" + (c.picked ? " picked" : ""));
    row.append(el("code", "", showToken(c.token)));
    const bars = el("div", "bars");
    const raw = el("span", "raw"), used = el("span", "used");
    raw.style.width = (100 * c.p).toFixed(1) + "%";
    used.style.width = (100 * c.p_sampled).toFixed(1) + "%";
    bars.append(raw, used);
    row.append(bars, el("span", "pct", percent(c.p) + " \u2192 " + percent(c.p_sampled)));
    row.title = `p = ${c.p.toFixed(4)} at T = 1, ${c.p_sampled.toFixed(4)} after temperature and top-p`;
    card.append(row);
  }
  return card;
}

// Reads an SSE stream of chat.completion.chunk objects, calling onChunk for each.
async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

async function answer(column, settings, controller) {
  const box = el("div", "message assistant");
  const text = el("span", "text");
  const probs = el("div", "probs");
  const meta = el("div", "meta");
  box.append(text, probs, meta);
  column.list.append(box);
  const started = performance.now();
  const messages = column.history.slice();  // the conversation this answer answers (feedback names it)
  let tokens = 0, content = "", finish = "", id = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      body: JSON.stringify({ model: column.name, messages: column.history, stream: true, show_probs: 5,
                             stream_options: { include_usage: true }, ...settings }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      id = id || chunk.id;
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) {
          content += choice.delta.content;
          text.textContent = content;
          box.dataset.updates = (parseInt(box.dataset.updates || "0", 10) + 1).toString();
        }
        if (choice.candidates) {
          tokens += 1;
          probs.append(tokenCard(choice.candidates));
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      column.list.parentElement.scrollTop = column.list.parentElement.scrollHeight;
    });
    column.history.push({ role: "assistant", content });
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else { box.classList.add("error"); text.textContent = content + (content ? "\n" : "") + "error: " + err.message; }
    column.history.push({ role: "assistant", content });
  }
  const seconds = (performance.now() - started) / 1000;
  meta.textContent = `${tokens} tokens in ${seconds.toFixed(1)} s` + (finish ? ` \u00b7 ${finish}` : "");
  // Only a whole answer can be judged: a stopped or failed one is not what the model would have said.
  const whole = id && !box.classList.contains("error") && finish !== "stopped";
  answered(column, box, whole ? { id, index: 0, model: column.name, messages, text: content } : null);
}

async function send(event) {
  event.preventDefault();
  const message = $("message").value.trim();
  if (!message || state.controllers.length) return;
  $("message").value = "";
  const settings = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top-p").value),
    max_tokens: Math.min(parseInt($("max-tokens").value, 10) || 1, state.maxTokens),
  };
  $("send").disabled = true;
  $("stop").disabled = false;
  const runs = state.columns.map((column) => {
    column.history.push({ role: "user", content: message });
    column.list.append(el("div", "message user", message));
    const controller = new AbortController();
    state.controllers.push(controller);
    return answer(column, settings, controller);
  });
  await Promise.all(runs);
  state.controllers = [];
  $("send").disabled = false;
  $("stop").disabled = true;
  $("message").focus();
}

function bindRange(id) {
  const input = $(id), out = $(id + "-value");
  input.addEventListener("input", () => { out.textContent = input.value; });
}

// The server's --max-tokens may be below the page's default: the field's bound and value follow it.
function learnTokenLimit(models) {
  const limits = models.map((m) => m.max_tokens).filter((n) => Number.isInteger(n) && n > 0);
  if (!limits.length) return;
  state.maxTokens = Math.min(...limits);
  const field = $("max-tokens");
  field.max = String(state.maxTokens);
  if ((parseInt(field.value, 10) || 1) > state.maxTokens) field.value = String(state.maxTokens);
}

async function start() {
  bindRange("temperature");
  bindRange("top-p");
  $("show-probs").addEventListener("change", (e) => {
    document.body.classList.toggle("show-probs", e.target.checked);
    $("legend").hidden = !e.target.checked;
  });
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  $("stop").addEventListener("click", () => state.controllers.forEach((c) => c.abort()));
  $("new-chat").addEventListener("click", () => {
    for (const column of state.columns) { column.history = []; column.list.textContent = ""; column.answers = []; }
    closeRanking();
  });
  const response = await api("/v1/models");
  if (!response.ok) { $("status").textContent = "could not list the models: HTTP " + response.status; return; }
  const models = (await response.json()).data;
  models.forEach((m) => addColumn(m.id));
  learnTokenLimit(models);
  await startFeedback();
  $("status").textContent = models.length > 1
    ? "Each message goes to every model; their answers stream side by side."
    : `Serving ${models[0].id} (context ${models[0].context_length} tokens).`;
  document.body.dataset.ready = "true";
}

// After every script has run: feedback.js defines what start() and answer() call.
window.addEventListener("DOMContentLoaded", start);
