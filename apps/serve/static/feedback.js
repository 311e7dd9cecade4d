// Feedback on the chat page: rate an answer good or bad, rank K alternatives to it, or pick the better of
// two models' answers. Everything a person submits goes to POST /v1/feedback, which names answers by the
// completion's id and the choice's index; the server resolves them and appends to its preference store.
// Ranking follows the labeling page (stages/rank/page): keys 1..K put answers in order, best first,
// "=" ties the next one with the one before, Backspace undoes, X marks all bad, Enter saves.
"use strict";

// How the rank stage samples what people rank, at its defaults (rank.temperatures, rank.max_new_tokens; no
// top-p): answer j at temperatures[j % their number]. tests/test_serve_page_feedback.py holds them equal.
const RANK_SAMPLING = { temperatures: [0.7, 0.9, 1.1, 1.3], max_tokens: 48, top_p: 1 };
const NAME = /^[A-Za-z0-9._-]{1,64}$/;  // what the server takes as a labeler's name
const feedback = { enabled: false, where: "", note: "" };
// `panel` counts the panels opened: answers that arrive for a panel since replaced are dropped.
const ranking = { open: false, panel: 0, items: [], tieNext: false, busy: false, controllers: [], done: false };

async function startFeedback() {
  try {
    const response = await api("/v1/feedback/status");
    const body = await response.json().catch(() => ({}));
    if (response.ok) Object.assign(feedback, { enabled: body.enabled === true, where: body.store, note: body.note });
    else feedback.note = (body.error && body.error.message) || "the server answered " + response.status;
  } catch (err) {
    feedback.note = "could not ask the server: " + err.message;
  }
  const note = $("feedback-note");
  note.classList.toggle("off", !feedback.enabled);
  note.textContent = feedback.enabled
    ? `Feedback is recorded: what you submit here (good/bad, rankings, picks) is appended to ${feedback.where} ` +
      "on the server, to train the next reward model."
    : "Feedback is off, so nothing you do here is recorded. " +
      (feedback.note ? `The server says: \u201c${feedback.note}\u201d. ` : "") +
      "You can still ask for alternatives and read them.";
  document.body.classList.toggle("feedback-on", feedback.enabled);
}

async function postFeedback(payload) {
  const name = $("labeler").value.trim();
  if (name && !NAME.test(name)) throw new Error("your name may hold only letters, digits, '.', '_' and '-'");
  if (name) payload.labeler = name;
  const response = await api("/v1/feedback", { method: "POST", body: JSON.stringify(payload) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || "the server answered " + response.status);
  return body;
}

// Called by page.js when an answer has ended; `record` is null for a stopped or failed answer.
function answered(column, box, record) {
  const bar = el("div", "feedback-actions");
  box.append(bar);
  if (!record) return;
  record.turn = column.history.filter((m) => m.role === "user").length;
  column.answers.push(record);
  const good = el("button", "rate good", "good"), bad = el("button", "rate bad", "bad");
  const alternatives = el("button", "ask-alternatives", "alternatives");
  alternatives.title = "sample other answers to the same message, side by side, and rank them";
  good.addEventListener("click", () => rate(record, true, bar));
  bad.addEventListener("click", () => rate(record, false, bar));
  alternatives.addEventListener("click", () => openAlternatives(record));
  bar.append(good, bad, alternatives);
  if (state.columns.length > 1) {
    const pick = el("button", "pick", "pick the better");
    pick.title = "compare this answer with the other model's answer to the same message";
    pick.addEventListener("click", () => openPick(record));
    bar.append(pick);
  }
}

// A rating can be changed: the store keeps every submission and reads the latest per answer and person.
async function rate(record, good, bar) {
  const buttons = [...bar.querySelectorAll(".rate")];
  buttons.forEach((b) => { b.disabled = true; });
  bar.querySelectorAll(".saved, .failed").forEach((n) => n.remove());
  try {
    const saved = await postFeedback({ rating: { id: record.id, index: record.index, good } });
    buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.classList.contains(good ? "good" : "bad"))));
    bar.append(el("span", "saved", `rated ${good ? "good" : "bad"} \u00b7 saved as ${saved.id}`));
  } catch (err) {
    bar.append(el("span", "failed", "not saved: " + err.message));
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// --- the ranking panel: K answers side by side, ranked with the keyboard ----------------------------------

function openPanel(title, record) {
  closeRanking();
  Object.assign(ranking, { open: true, panel: ranking.panel + 1, items: [], tieNext: false, busy: false,
                           controllers: [], done: false });
  $("ranking-title").textContent = title;
  const asked = record.messages.filter((m) => m.role === "user").pop();
  $("ranking-prompt").textContent = asked ? asked.content : "";
  $("alternatives").replaceChildren();
  $("all-bad").checked = false;
  $("reason").value = "";
  $("ranking-error").textContent = "";
  $("ranking-save").hidden = !feedback.enabled;
  rankingNotice("");
  $("ranking").hidden = false;
  if (document.activeElement) document.activeElement.blur();  // the number keys rank; they must not type
  $("ranking").scrollIntoView({ block: "nearest" });
}

function closeRanking() {
  ranking.controllers.forEach((c) => c.abort());
  Object.assign(ranking, { open: false, items: [], controllers: [] });
  $("ranking").hidden = true;
}

function addCard(label) {
  const key = ranking.items.length + 1;
  const card = el("div", "alt");
  card.dataset.key = key;
  const head = el("div", "alt-head");
  head.append(el("span", "key", String(key)), el("span", "place", "not ranked"), el("span", "alt-label", label));
  const text = el("div", "text");
  card.append(head, text);
  $("alternatives").append(card);
  const item = { key, card, text, answer: null, content: "", ranked: false, tie: false, usable: false };
  ranking.items.push(item);
  return item;
}

// The answers to rank, sampled as the rank stage samples: one streamed request per temperature, n answers each.
async function openAlternatives(record) {
  const k = Math.max(2, Math.min(8, parseInt($("alt-k").value, 10) || 3));
  openPanel(`${k} alternatives from ${record.model}`, record);
  const panel = ranking.panel;
  const temps = RANK_SAMPLING.temperatures;
  const perTemperature = new Map();
  for (let j = 0; j < k; j++) {
    const t = temps[j % temps.length];
    perTemperature.set(t, [...(perTemperature.get(t) || []), addCard(`T ${t}`)]);
  }
  rankingNotice(`Sampling ${k} answers\u2026`);
  await Promise.all([...perTemperature].map(([t, items]) => sample(record, t, items)));
  if (ranking.open && ranking.panel === panel) settle();
}

async function sample(record, temperature, items) {
  const controller = new AbortController();
  ranking.controllers.push(controller);
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      body: JSON.stringify({ model: record.model, messages: record.messages, n: items.length, stream: true, temperature,
                             top_p: RANK_SAMPLING.top_p,
                             max_tokens: Math.min(RANK_SAMPLING.max_tokens, state.maxTokens) }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    let id = null;
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      id = id || chunk.id;
      for (const choice of chunk.choices) {
        const item = items[choice.index];
        if (item && choice.delta && choice.delta.content) {
          item.content += choice.delta.content;
          item.text.textContent = item.content;
        }
      }
    });
    items.forEach((item, index) => { item.answer = { id, index }; });
  } catch (err) {
    if (err.name === "AbortError") return;
    items.forEach((item) => { item.card.classList.add("error"); item.text.textContent = "error: " + err.message; });
  }
}

// After sampling: an answer identical to an earlier one is shown but not ranked twice (the rank stage
// merges them too); fewer than two different answers leave nothing to rank.
function settle() {
  const seen = new Map();
  for (const item of ranking.items) {
    if (!item.answer) continue;
    const text = item.content.trim();
    if (seen.has(text)) {
      item.card.classList.add("duplicate");
      item.card.querySelector(".place").textContent = `same as ${seen.get(text)}: not ranked`;
      continue;
    }
    seen.set(text, item.key);
    item.usable = true;
    if (text === "") item.text.textContent = "(empty answer)";
  }
  ranking.done = true;
  const usable = ranking.items.filter((x) => x.usable).length;
  if (usable < 2) rankingNotice("Fewer than two different answers came back: nothing to rank. Esc closes.");
  else if (!feedback.enabled) rankingNotice("Feedback is off on this server: you can read these answers, not save a ranking.");
  else rankingNotice("Press the number of the best answer.");
  renderRanking();
}

// The better of two models' answers to the same conversation: a ranking of two.
function openPick(record) {
  const pair = state.columns.map((c) => c.answers.find((a) => a.turn === record.turn));
  openPanel("Which answer is better?", record);
  const same = pair.every((a) => a && JSON.stringify(a.messages) === JSON.stringify(record.messages));
  if (pair.some((a) => !a)) {
    rankingNotice("The other model has no whole answer to this message (it was stopped or failed): nothing to pick from.");
    $("ranking-save").hidden = true;
    return;
  }
  if (!same) {
    rankingNotice("The two models do not answer the same conversation here (each column keeps its own earlier " +
                  "answers), so their answers cannot be compared; pick on the first message of a chat, or ask " +
                  "one model for alternatives.");
    $("ranking-save").hidden = true;
    return;
  }
  for (const answer of pair) {
    const item = addCard(answer.model);
    item.answer = { id: answer.id, index: answer.index };
    item.content = answer.text;
    item.text.textContent = answer.text;
  }
  settle();
}

function rankingNotice(text) { $("ranking-notice").textContent = text || ""; }
const usableItems = () => ranking.items.filter((x) => x.usable);
const rankedItems = () => usableItems().filter((x) => x.ranked).sort((a, b) => a.order - b.order);

function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  return n + (tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[ones] || "th"));
}

// Groups best first, each a list of items tied with one another.
function rankingGroups() {
  const out = [];
  rankedItems().forEach((x) => { if (x.tie && out.length) out[out.length - 1].push(x); else out.push([x]); });
  return out;
}

function renderRanking() {
  const groups = rankingGroups();
  groups.forEach((group, place) => group.forEach((x) => {
    x.card.querySelector(".place").textContent = ordinal(place + 1) + (group.length > 1 ? " (tied)" : "");
  }));
  const tied = new Set(groups.filter((g) => g.length > 1).flat());
  for (const x of usableItems()) {
    x.card.classList.toggle("ranked", x.ranked);
    x.card.classList.toggle("tied", tied.has(x));
    if (!x.ranked) x.card.querySelector(".place").textContent = "not ranked";
  }
  $("ranking-order").textContent = groups.length
    ? "Your ranking, best first: " + groups.map((g) => g.map((x) => x.key).join(" = ")).join(" > ") : "";
  $("ranking-save").disabled = !(ranking.done && usableItems().length >= 2 && usableItems().every((x) => x.ranked));
}

function rankKey(n) {
  const it = usableItems().find((x) => x.key === n);
  if (!it || !ranking.done) return;
  if (it.ranked) { rankingNotice(`Answer ${n} is ranked already; Backspace undoes the last one.`); return; }
  const done = rankedItems().length;
  Object.assign(it, { ranked: true, order: done, tie: ranking.tieNext && done > 0 });
  ranking.tieNext = false;
  const rest = usableItems().filter((x) => !x.ranked);
  if (rest.length === 1) Object.assign(rest[0], { ranked: true, order: done + 1, tie: false });  // the last is last
  rankingNotice("");
  renderRanking();
}

function undoRank() {
  const last = rankedItems().pop();
  if (last) Object.assign(last, { ranked: false, tie: false });
  ranking.tieNext = false;
  rankingNotice("");
  renderRanking();
}

function clearRank() {
  usableItems().forEach((x) => Object.assign(x, { ranked: false, tie: false }));
  ranking.tieNext = false;
  renderRanking();
}

async function saveRanking() {
  if (!feedback.enabled || ranking.busy || $("ranking-save").disabled) return;
  ranking.busy = true;
  $("ranking-error").textContent = "";
  const payload = { ranking: rankingGroups().map((g) => g.map((x) => x.answer)) };
  if ($("all-bad").checked) payload.all_bad = true;
  if ($("reason").value.trim()) payload.reason = $("reason").value.trim();
  try {
    const saved = await postFeedback(payload);
    const order = $("ranking-order").textContent.replace("Your ranking, best first: ", "");
    closeRanking();
    $("status").textContent = `Your ranking (${order}${payload.all_bad ? ", all bad" : ""}) is saved as ${saved.id} ` +
      `in ${feedback.where}.`;
  } catch (err) {
    $("ranking-error").textContent = "not saved: " + err.message;
  } finally {
    ranking.busy = false;
  }
}

function typing(target) {
  return target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "checkbox"));
}

document.addEventListener("keydown", (e) => {
  if (!ranking.open || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (typing(e.target)) {  // the reason box: Enter saves from there, other keys type
    if (e.target.id === "reason" && k === "Enter") { e.preventDefault(); saveRanking(); }
    return;
  }
  if (/^[1-9]$/.test(k)) rankKey(Number(k));
  else if (k === "=") {
    const n = rankedItems().length;
    if (n && n < usableItems().length) { ranking.tieNext = true; rankingNotice("The next number ties with the answer before it."); }
  } else if (k === "Enter") saveRanking();
  else if (k === "Backspace") undoRank();
  else if (k === "Escape") closeRanking();
  else if (k === "x" || k === "X") $("all-bad").checked = !$("all-bad").checked;
  else return;
  e.preventDefault();  // e.g. Enter must not also press a focused button
});

window.addEventListener("DOMContentLoaded", () => {
  $("labeler").value = localStorage.getItem("feedbackName") || "";
  $("labeler").addEventListener("change", () => localStorage.setItem("feedbackName", $("labeler").value.trim()));
  $("ranking-save").addEventListener("click", saveRanking);
  $("ranking-undo").addEventListener("click", undoRank);
  $("ranking-clear").addEventListener("click", clearRank);
  $("ranking-close").addEventListener("click", closeRanking);
  $("ranking").querySelectorAll("button").forEach((b) => b.addEventListener("click", () => b.blur()));
});
