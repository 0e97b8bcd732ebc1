// codelm playground: sends the code box to /v1/completions with stream=true and shows the
// completion as its server-sent events arrive. No framework, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;

function setMode() {
  const mode = $("mode").value;
  $("suffix-block").hidden = mode !== "fim";
  $("instruction-row").hidden = mode !== "instruction";
  $("code-label").textContent = mode === "fim" ? "Code before the gap (prefix)"
    : mode === "instruction" ? "Start of the code (may be empty)" : "Code";
}

function requestBody() {
  const mode = $("mode").value;
  const body = {
    prompt: $("code").value,
    temperature: Number($("temperature").value),
    max_tokens: Math.round(Number($("max-tokens").value)),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (mode === "fim") body.suffix = $("suffix").value;
  if (mode === "instruction") body.instruction = $("instruction").value;
  if ($("block-end").checked && mode !== "fim") body.stop_at_block_end = true;
  if ($("trace").checked) body.logprobs = 5;
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function reset(body) {
  const mode = $("mode").value;
  $("before").textContent = mode === "instruction" ? "" : body.prompt;
  $("after").textContent = mode === "fim" ? body.suffix : "";
  $("completion").textContent = "";
  $("completion").dataset.chunks = "0";
  $("stop-reason").textContent = "…";
  $("stats").textContent = "";
  $("trace-table").tBodies[0].replaceChildren();
  $("trace-block").hidden = !$("trace").checked;
  showError("");
}

function addTrace(logprobs) {
  const tbody = $("trace-table").tBodies[0];
  logprobs.tokens.forEach((token, i) => {
    const row = tbody.insertRow();
    const p = Math.exp(logprobs.token_logprobs[i]);
    row.insertCell().textContent = String(tbody.rows.length);
    const cell = row.insertCell();
    cell.className = "tok";
    cell.textContent = JSON.stringify(token);
    const prob = row.insertCell();
    prob.textContent = (100 * p).toFixed(1) + "%";
    if (p < 0.1) prob.className = "low";
    const top = logprobs.top_logprobs[i] || {};
    row.insertCell().textContent = Object.entries(top)
      .map(([t, lp]) => `${JSON.stringify(t)} ${(100 * Math.exp(lp)).toFixed(1)}%`).join("  ");
  });
}

function handleEvent(data, started) {
  if (data === "[DONE]") return;
  const msg = JSON.parse(data);
  if (msg.error) { showError(msg.error.message); return; }
  if (msg.usage) {
    const secs = (performance.now() - started) / 1000;
    const n = msg.usage.completion_tokens;
    $("stats").textContent = `${n} tokens in ${secs.toFixed(2)} s (${(n / secs).toFixed(1)} tokens/s)`;
  }
  const choice = msg.choices && msg.choices[0];
  if (!choice) return;
  if (choice.text) {
    $("completion").textContent += choice.text;
    $("completion").dataset.chunks = String(Number($("completion").dataset.chunks) + 1);
  }
  if (choice.logprobs) addTrace(choice.logprobs);
  if (choice.finish_reason) $("stop-reason").textContent = `${choice.stop_rule} (${choice.finish_reason})`;
}

async function readStream(response, started) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) handleEvent(line.slice(6), started);
      }
    }
  }
}

async function generate() {
  if (controller) return;
  const body = requestBody();
  reset(body);
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => null);
      throw new Error(err && err.error ? err.error.message : `HTTP ${response.status}`);
    }
    await readStream(response, started);
  } catch (e) {
    if (e.name === "AbortError") $("stop-reason").textContent = "stopped by you";
    else { showError(String(e.message || e)); $("stop-reason").textContent = "error"; }
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function loadInfo() {
  try {
    const models = await (await fetch("/v1/models")).json();
    const m = models.data[0];
    $("model").textContent = `model ${m.id} · context ${m.context_length} tokens`;
    const health = await (await fetch("/health")).json();
    $("health").textContent = health.model_loaded ? "ready" : "model not loaded";
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("mode").addEventListener("change", setMode);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("code").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
    if (e.key === "Tab" && !e.shiftKey) {
      e.preventDefault();
      const t = e.target, s = t.selectionStart;
      t.setRangeText("    ", s, t.selectionEnd, "end");
    }
  });
  setMode();
  loadInfo();
});
