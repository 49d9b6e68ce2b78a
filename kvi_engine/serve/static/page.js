// The kvi serve page: POST /v1/answer with "stream": true and render its server-sent events as they arrive
// (retrieval -> answer deltas -> final answer with grounding and per-capsule attribution). No build step.
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function renderRetrieval(r) {
  $("entities").replaceChildren(...(r.entities.length ? r.entities : ["(none linked)"]).map((e) => el("li", e)));
  $("path").replaceChildren(...r.triples.map((t) =>
    el("li", `hop ${t.hop}: ${t.subject} —${t.relation}→ ${t.object}  (score ${t.score.toFixed(3)}, capsule ${t.capsule_id})`)));
  const scores = new Map(r.triples.map((t) => [t.capsule_id, t.score]));
  $("capsules").tBodies[0].replaceChildren(...r.capsules.map((c) => {
    const row = el("tr");
    row.dataset.capsule = c.capsule_id;
    row.append(el("td", String(c.capsule_id)), el("td", c.statement),
               el("td", scores.has(c.capsule_id) ? scores.get(c.capsule_id).toFixed(3) : "anchor"));
    const cell = el("td", undefined, "bar");
    row.append(cell);
    return row;
  }));
  $("evidence").replaceChildren(...r.evidence.map((e) => el("li", e)));
}

function renderAttribution(attr) {
  const mass = new Map((attr ? attr.capsules : []).map((c) => [c.capsule_id, c.mass]));
  const top = Math.max(1e-9, ...mass.values());
  for (const row of $("capsules").tBodies[0].rows) {
    const m = mass.get(Number(row.dataset.capsule));
    const cell = row.cells[3];
    if (m === undefined) { cell.textContent = "–"; continue; }
    const wrap = el("div", undefined, "attr"), track = el("div", undefined, "track"), fill = el("div", undefined, "fill");
    fill.style.width = `${(100 * m / top).toFixed(1)}%`;
    fill.title = `attention mass ${m}`;
    track.append(fill);
    wrap.append(track, el("span", m.toFixed(4)));
    cell.replaceChildren(wrap);
  }
}

async function ask(ev) {
  ev.preventDefault();
  $("answer").textContent = "";
  $("raw").textContent = "";
  status("retrieving…");
  $("go").disabled = true;
  try {
    const body = {question: $("question").value, method: $("method").value,
                  max_tokens: Number($("max_tokens").value) || 32, stream: true};
    const resp = await fetch("/v1/answer", {method: "POST", headers: {"content-type": "application/json"},
                                            body: JSON.stringify(body)});
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${resp.status}`);
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const e = JSON.parse(line.slice(6));
        if (e.event === "retrieval") { renderRetrieval(e); status("generating…"); }
        else if (e.event === "delta") $("answer").textContent += e.text;
        else if (e.event === "answer") {
          $("answer").textContent = e.answer || "(nothing grounded)";
          if (e.trace && e.trace.dropped && e.trace.dropped.length) $("raw").textContent = `raw: ${e.trace.raw}`;
          renderAttribution(e.attribution);
          status(`done: ${e.token_ids.length} tokens, first token after ${e.ttft_ms} ms, bank generation ${e.generation}`);
          document.body.dataset.done = "1";
        } else if (e.event === "error") throw new Error(e.message);
      }
    }
  } catch (err) {
    status(`error: ${err.message}`, true);
  } finally {
    $("go").disabled = false;
  }
}

async function bank() {
  try {
    const b = await (await fetch("/v1/bank")).json();
    $("bank").textContent = `bank generation ${b.generation}: ${b.live_capsules} capsules, ${b.num_tokens} tokens`;
  } catch (err) { $("bank").textContent = "bank: unavailable"; }
}

$("ask").addEventListener("submit", ask);
bank();
