// The labeling page: one prompt at a time. The order on screen is the ranking, best at the top; answers
// not ranked yet wait below a divider. Every save goes to the server, which appends it to the labels file
// before it answers, so closing this tab never loses a saved ranking.
"use strict";

const $ = (id) => document.getElementById(id);

let items = [];        // {index, key, text, ranked, tie}: ranked ones first, in rank order
let promptId = null;
let history = [];      // prompt ids ranked, oldest first: where "Back" goes
let tieNext = false;   // "=" was pressed: the next number ties with the answer ranked just before it
let busy = false;
let finished = false;

async function api(path, body) {
  const options = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("Cannot reach the labeling server; it may have stopped. Saved rankings are safe: " +
                    "run the same command again to continue.");
  }
  let data = {};
  try { data = await response.json(); } catch (e) { /* an empty or non-JSON answer: reported below */ }
  if (!response.ok) throw new Error(data.error || `The server answered ${response.status}.`);
  return data;
}

async function guarded(action) {
  if (busy || finished) return;
  busy = true;
  $("error").textContent = "";
  try { await action(); } catch (e) { $("error").textContent = e.message; } finally { busy = false; }
}

function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({1: "st", 2: "nd", 3: "rd"}[ones] || "th");
  return n + suffix;
}

function showProgress(p) {
  $("progress-text").textContent = `${p.ranked} of ${p.total} ranked · ${p.remaining} left`;
  $("progress-bar").style.width = `${p.total ? (100 * p.ranked) / p.total : 0}%`;
}

function notice(text) { $("notice").textContent = text || ""; }
const rankedCount = () => items.filter((it) => it.ranked).length;

function render() {
  const list = $("answers");
  list.replaceChildren();
  let place = 0;
  items.forEach((it, pos) => {
    if (!it.ranked && (pos === 0 || items[pos - 1].ranked)) {
      const divider = document.createElement("li");
      divider.className = "divider";
      divider.textContent = pos === 0 ? "Not ranked yet: press the number of the best answer, or drag one to the top"
                                      : "Not ranked yet";
      list.append(divider);
    }
    const tied = it.ranked && it.tie && pos > 0;  // tied with the one above: shares its place
    const next = items[pos + 1];
    const inTie = tied || (it.ranked && next !== undefined && next.ranked && next.tie);
    if (it.ranked && !tied) place += 1;
    const li = document.createElement("li");
    li.className = "answer" + (it.ranked ? " ranked" : "") + (tied ? " tied" : "");
    li.dataset.index = it.index;
    li.dataset.key = it.key;
    const head = document.createElement("div");
    head.className = "answer-head";
    const handle = document.createElement("span");
    handle.className = "handle";
    handle.title = "Drag to reorder";
    handle.textContent = "⠿";
    handle.addEventListener("pointerdown", (e) => startDrag(e, li));
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = it.key;
    const label = document.createElement("span");
    label.className = "place";
    label.textContent = it.ranked ? ordinal(place) + (inTie ? " (tied)" : "") : "not ranked";
    head.append(handle, key, label);
    if (it.ranked && pos > 0) {
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "tie-toggle";
      toggle.textContent = "= tie with the one above";
      toggle.setAttribute("aria-pressed", String(it.tie));
      toggle.addEventListener("click", () => { it.tie = !it.tie; toggle.blur(); render(); });
      head.append(toggle);
    }
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = it.text === "" ? "(empty answer)" : it.text;
    li.append(head, text);
    list.append(li);
  });
  $("submit").disabled = !(items.length && items.every((it) => it.ranked));
}

function rankKey(n) {
  const it = items.find((x) => x.key === n);
  if (!it) return;
  if (it.ranked) { notice(`Answer ${n} is ranked already; Backspace undoes the last one.`); return; }
  const done = rankedCount();
  items.splice(items.indexOf(it), 1);
  it.ranked = true;
  it.tie = tieNext && done > 0;
  tieNext = false;
  items.splice(done, 0, it);
  const rest = items.filter((x) => !x.ranked);
  if (rest.length === 1) { rest[0].ranked = true; rest[0].tie = false; }  // the last one is last
  notice("");
  render();
}

function unrankedBelow(ranked, unranked) {
  unranked.forEach((x) => { x.ranked = false; x.tie = false; });
  items = ranked.concat(unranked.sort((a, b) => a.key - b.key));
}

function undo() {
  const ranked = items.filter((x) => x.ranked);
  if (!ranked.length) return;
  const last = ranked.pop();
  unrankedBelow(ranked, items.filter((x) => !x.ranked).concat([last]));
  tieNext = false;
  notice("");
  render();
}

function clearRanking() {
  unrankedBelow([], items.slice());
  tieNext = false;
  notice("");
  render();
}

// Dragging uses pointer events (mouse, pen, touch alike): the card follows the pointer through the list,
// and on release the whole order on screen becomes the ranking.
function startDrag(event, li) {
  event.preventDefault();
  const list = $("answers");
  const startY = event.clientY;
  let moved = false;
  const onMove = (e) => {
    if (!moved && Math.abs(e.clientY - startY) < 4) return;
    if (!moved) {
      moved = true;
      li.classList.add("dragging");
      list.querySelectorAll(".divider").forEach((d) => d.remove());
    }
    const others = [...list.querySelectorAll(".answer:not(.dragging)")];
    const before = others.find((o) => { const r = o.getBoundingClientRect(); return e.clientY < r.top + r.height / 2; });
    list.insertBefore(li, before || null);
  };
  const onUp = () => {
    document.removeEventListener("pointermove", onMove);
    document.removeEventListener("pointerup", onUp);
    if (!moved) return;
    const byIndex = new Map(items.map((x) => [String(x.index), x]));
    items = [...list.querySelectorAll(".answer")].map((el) => byIndex.get(el.dataset.index));
    const dragged = byIndex.get(li.dataset.index);
    dragged.tie = false;  // it left its neighbours: a tie it had no longer means what it meant
    items.forEach((x) => { x.ranked = true; });
    items[0].tie = false;
    tieNext = false;
    notice("The order on screen is your ranking: best at the top.");
    render();
  };
  document.addEventListener("pointermove", onMove);
  document.addEventListener("pointerup", onUp);
}

function groups() {
  const out = [];
  items.forEach((x) => { if (x.tie && out.length) out[out.length - 1].push(x.index); else out.push([x.index]); });
  return out.every((g) => g.length === 1) ? out.map((g) => g[0]) : out;
}

async function load(id) {
  const view = await api(`/api/prompt/${encodeURIComponent(id)}`);
  promptId = view.prompt_id;
  $("prompt-id").textContent = promptId;
  const box = $("prompt");
  box.replaceChildren();
  view.turns.forEach((t) => {
    const turn = document.createElement("div");
    turn.className = "turn";
    if (view.turns.length > 1) {
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = t.role + ":";
      turn.append(role);
    }
    turn.append(document.createTextNode(t.content));
    box.append(turn);
  });
  items = view.answers.map((a, n) => ({index: a.index, key: n + 1, text: a.text, ranked: false, tie: false}));
  $("all-bad").checked = false;
  notice("");
  if (view.earlier) {
    const byIndex = new Map(items.map((x) => [x.index, x]));
    items = [];
    view.earlier.ranking.forEach((g) => g.forEach((i, j) => {
      const x = byIndex.get(i);
      x.ranked = true;
      x.tie = j > 0;
      items.push(x);
    }));
    $("all-bad").checked = view.earlier.all_bad;
    notice("You ranked this prompt before (shown below); saving replaces that ranking.");
  }
  tieNext = false;
  showProgress(view.progress);
  render();
  window.scrollTo(0, 0);
}

async function submit() {
  if (!items.every((x) => x.ranked)) { notice("Rank every answer first (the last one falls into place)."); return; }
  const data = await api("/api/rank", {prompt_id: promptId, ranking: groups(), all_bad: $("all-bad").checked});
  history = history.filter((id) => id !== promptId).concat([promptId]);
  showProgress(data.progress);
  if (data.done) {
    showDone("All prompts are ranked. Thank you!", `${data.progress.ranked} rankings are saved. You can close this tab.`);
  } else {
    await load(data.next);
  }
}

async function skip() {
  const data = await api(`/api/next?after=${encodeURIComponent(promptId)}`);
  if (data.next === promptId) { notice("This is the only prompt left."); return; }
  if (data.next) await load(data.next);
}

async function back() {
  const pos = history.indexOf(promptId);
  const earlier = pos >= 0 ? history.slice(0, pos) : history;
  if (!earlier.length) { notice("Nothing to go back to yet."); return; }
  await load(earlier[earlier.length - 1]);
}

async function finish() {
  const data = await api("/api/finish", {});
  const p = data.progress;
  showDone("Saved. You can close this tab.",
           `${p.ranked} of ${p.total} prompts ranked, ${p.remaining} left. Run the same command again to continue where you stopped.`);
}

function showDone(title, text) {
  finished = true;
  $("work").hidden = true;
  $("finish").hidden = true;
  $("done-title").textContent = title;
  $("done-text").textContent = text;
  $("done").hidden = false;
}

document.addEventListener("keydown", (e) => {
  if (finished || e.ctrlKey || e.metaKey || e.altKey || $("work").hidden) return;
  const k = e.key;
  if (/^[1-9]$/.test(k)) rankKey(Number(k));
  else if (k === "=") {
    if (rankedCount() && rankedCount() < items.length) { tieNext = true; notice("The next number ties with the answer before it."); }
  } else if (k === "Enter") guarded(submit);
  else if (k === "Backspace") undo();
  else if (k === "Escape") { tieNext = false; notice(""); }
  else if (k === "x" || k === "X") $("all-bad").checked = !$("all-bad").checked;
  else if (k === "s" || k === "S") guarded(skip);
  else if (k === "b" || k === "B") guarded(back);
  else return;
  e.preventDefault();  // e.g. Enter must not also press a focused button
});

$("submit").addEventListener("click", () => guarded(submit));
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearRanking);
$("skip").addEventListener("click", () => guarded(skip));
$("back").addEventListener("click", () => guarded(back));
$("finish").addEventListener("click", () => guarded(finish));
document.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => b.blur()));

guarded(async () => {
  const state = await api("/api/state");
  $("who").textContent = `labeling as ${state.labeler}`;
  history = state.recent;
  showProgress(state.progress);
  $("work").hidden = false;
  if (state.next === null) showDone("All prompts are ranked.", "There is nothing left to rank. You can close this tab.");
  else await load(state.next);
});
