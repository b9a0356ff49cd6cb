// The judging page: the name is asked once and kept in localStorage; each choice is posted with the
// two results shown and which was left; the next pair is fetched only once the server has written
// the choice, so a choice the page moved on from is on disk.
"use strict";
const KEY = "nst-judge-name";
const $ = (id) => document.getElementById(id);
let offer = null, shownAt = 0, busy = false;

function judge() { return localStorage.getItem(KEY) || ""; }

function askName() {
  $("judging").hidden = true;
  $("name-form").hidden = false;
  $("name").value = judge();
  $("name").focus();
}

function start() {
  $("name-form").hidden = true;
  $("judging").hidden = false;
  $("rename").hidden = false;
  $("who").textContent = "judge: " + judge();
  next();
}

function say(text) { $("status").textContent = text; }

function loaded(img) {
  return new Promise((resolve) => {
    if (img.complete && img.naturalWidth > 0) return resolve();
    img.onload = img.onerror = () => resolve();
  });
}

async function next() {
  busy = true;
  document.body.dataset.state = "loading";
  try {
    const r = await fetch("/api/next?judge=" + encodeURIComponent(judge()));
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    offer = await r.json();
  } catch (e) {
    say("could not reach the judging server (" + e.message + "); reload to try again");
    return;
  }
  $("count").textContent = offer.judged + " judged";
  $("content").hidden = !offer.content;
  if (offer.content) $("content").src = offer.content;
  $("styles").replaceChildren(...offer.styles.map((src) => { const i = document.createElement("img"); i.src = src; i.alt = "the painting"; return i; }));
  $("left").src = offer.left.src;
  $("right").src = offer.right.src;
  document.querySelectorAll(".pick").forEach((b) => b.classList.remove("chosen"));
  await Promise.all([loaded($("left")), loaded($("right"))]);
  shownAt = performance.now();
  say("");
  busy = false;
  document.body.dataset.state = "ready";
}

async function choose(winner) {
  if (busy || !offer) return;
  busy = true;
  document.body.dataset.state = "sending";
  if (winner !== "none") $("pick-" + winner).classList.add("chosen");
  const body = { judge: judge(), left: offer.left.id, right: offer.right.id, winner: winner,
                 repeat: offer.repeat, seconds: Math.round(performance.now() - shownAt) / 1000 };
  try {
    const r = await fetch("/api/choice", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
  } catch (e) {
    say("not recorded (" + e.message + "); choose again");
    busy = false;
    document.body.dataset.state = "ready";
    return;
  }
  next();
}

document.addEventListener("keydown", (e) => {
  if (!$("name-form").hidden || e.altKey || e.ctrlKey || e.metaKey) return;
  const winner = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "none" }[e.key];
  if (winner) { e.preventDefault(); choose(winner); }
});
document.querySelectorAll("[data-winner]").forEach((b) => b.addEventListener("click", () => choose(b.dataset.winner)));
$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  localStorage.setItem(KEY, name);
  start();
});
$("rename").addEventListener("click", askName);
judge() ? start() : askName();
