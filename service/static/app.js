"use strict";
// The demo page: calls the public API only (GET /v1/models, POST /v1/audio/resynthesize,
// POST /v1/audio/generate), plays the audio, draws spectrograms, reports timings and errors.

const $ = (id) => document.getElementById(id);
const state = { card: null, recorder: null, requests: 0, urls: {} };

// ---- Talking to the API ------------------------------------------------------------------

/** An API failure already put in plain words (`message`), with the server's own (`detail`). */
class PlainError extends Error {
  constructor(message, detail = "") {
    super(message);
    this.detail = detail;
  }
}

async function api(path, init = {}) {
  const key = $("api-key").value.trim();
  const headers = { ...(init.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (error) {
    throw new PlainError(
      "Could not reach the server, or it closed the connection. Check that it is running; "
        + "a very large upload can also be cut off. Then try again.",
      String(error),
    );
  }
  if (!response.ok) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch {
      // not our JSON envelope (a proxy's page, say): the status alone must do
    }
    const detail = `${response.status}${error.code ? ` ${error.code}` : ""}: ${error.message || response.statusText}`;
    throw new PlainError(plainWords(response.status, error, response.headers.get("Retry-After"), key), detail);
  }
  return response;
}

function megabytes(bytes) {
  return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MB`;
}

/** What an error envelope means for the person using the page. */
function plainWords(status, error, retryAfter, key) {
  const code = error.code || "";
  const limits = state.card ? state.card.limits : null;
  const wait = retryAfter ? `in ${retryAfter} s` : "in a moment";
  if (status === 401) {
    return key
      ? "The server did not accept this API key. Check it, then press Connect."
      : "This server needs an API key. Paste it into the API key field at the top, then press Connect.";
  }
  if (code === "audio_too_long") {
    const most = limits ? ` at most ${limits.max_upload_s} s` : " a shorter clip";
    return `That recording is too long: this server accepts${most}. Trim it and try again.`;
  }
  if (status === 413) {
    const most = limits ? ` (at most ${megabytes(limits.max_body_bytes)})` : "";
    return `That file is too large for this server${most}. Try a shorter clip or a compressed format.`;
  }
  if (code === "undecodable_audio") {
    return "That file is not audio the server can read (unsupported format). Try WAV, FLAC, OGG or MP3.";
  }
  if (code === "empty_audio") return "That file holds no audio.";
  if (status === 503) {
    if (code === "loading") return `The model is still loading. Try again ${wait}.`;
    if (code === "draining") return `The server is shutting down. Try again ${wait}.`;
    return `The server is busy (overloaded). Try again ${wait}.`;
  }
  if (status === 400) return error.message || "The server could not use this request.";
  if (status === 422 && error.param === "speaker") {
    $("speaker-field").hidden = false; // a multi-speaker model without names: ask for an id
    return `Choose a speaker: ${error.message}`;
  }
  if (status === 422 && error.param) return `Please check ${error.param}: ${error.message}`;
  if (status >= 500) return "Something went wrong on the server. Try again; if it persists, see the server's log.";
  return error.message || `The server answered ${status}.`;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  if (!error) return;
  const message = document.createElement("strong");
  message.textContent = error.message;
  box.append(message);
  if (error.detail) {
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = `Server said ${error.detail}`;
    box.append(" ", detail);
  }
  box.scrollIntoView({ block: "nearest" });
  setStatus("");
}

function setStatus(text) {
  $("status").textContent = text;
}

/** Run one action: busy buttons, status text, errors shown in plain words. */
async function run(label, action) {
  showError(null);
  setStatus(`${label}…`);
  document.body.setAttribute("aria-busy", "true");
  document.querySelectorAll("#try button").forEach((button) => { button.disabled = true; });
  try {
    await action();
  } catch (error) {
    showError(error instanceof PlainError ? error : new PlainError(`Unexpected problem: ${error.message}`));
    console.error(error);
  } finally {
    document.body.removeAttribute("aria-busy");
    enableForms(state.card);
  }
}

// ---- The model card ----------------------------------------------------------------------

async function loadCard() {
  const response = await api("/v1/models");
  const card = (await response.json()).data[0];
  state.card = card;
  renderCard(card);
  configureForms(card);
  setStatus(`Connected to ${card.id}.`);
}

function formatValue(value) {
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en");
    return Math.abs(value) >= 1000 ? value.toFixed(0) : String(Number(value.toPrecision(3)));
  }
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (value === null || value === undefined) return "–";
  return String(value);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

/** Rows of [path, leaf] for a nested object. */
function flatten(value, path = [], rows = []) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, [...path, key], rows);
  } else {
    rows.push([path.join(" › "), value]);
  }
  return rows;
}

const isPlain = (value) => value && typeof value === "object" && !Array.isArray(value);

/** A table of an object: systems x metrics when every value is a flat object, else key/value. */
function table(object, caption) {
  const table = element("table");
  if (caption) table.append(element("caption", caption));
  const rows = Object.values(object);
  if (rows.length && rows.every((row) => isPlain(row) && !Object.values(row).some(isPlain))) {
    const columns = [...new Set(rows.flatMap(Object.keys))];
    const head = table.createTHead().insertRow();
    head.append(element("th", ""), ...columns.map((c) => element("th", c)));
    head.querySelectorAll("th").forEach((th) => th.setAttribute("scope", "col"));
    const body = table.createTBody();
    for (const [name, row] of Object.entries(object)) {
      const tr = body.insertRow();
      const th = element("th", name);
      th.setAttribute("scope", "row");
      tr.append(th, ...columns.map((c) => element("td", formatValue(row[c]), "number")));
    }
    return table;
  }
  const body = table.createTBody();
  for (const [path, value] of flatten(object)) {
    const tr = body.insertRow();
    const th = element("th", path);
    th.setAttribute("scope", "row");
    const td = element("td");
    if (typeof value === "string" && value.length > 120) {
      const details = element("details");
      details.append(element("summary", `${value.slice(0, 60).split("\n")[0]}…`), element("pre", value));
      td.append(details);
    } else {
      td.textContent = formatValue(value);
      if (typeof value === "number") td.className = "number";
    }
    tr.append(th, td);
  }
  return table;
}

function renderCard(card) {
  const arch = card.architecture;
  const kind = arch.conditional ? "conditional (audio or mel in)" : "unconditional (noise in)";
  $("model-summary").textContent = `${card.id} · ${card.sample_rate.toLocaleString("en")} Hz · `
    + `${formatValue(arch.parameters)} parameters · ${kind}`;
  const facts = {
    model: `${card.id} (version ${card.version})`,
    "sample rate": `${card.sample_rate} Hz`,
    "hop length": `${card.hop_length} samples`,
    "mel bands": card.n_mels,
    parameters: arch.parameters,
    "size (float32)": megabytes(arch.parameters * 4),
    architecture: `${arch.flows} IAF flows × ${arch.layers_per_flow} WaveNet layers, `
      + `${arch.residual_channels} residual channels, receptive field ${arch.receptive_field} samples`,
    "source-filter": arch.source_filter ? "yes" : "no",
    input: kind,
    speakers: card.speakers.length ? card.speakers : "one",
    "default temperature": card.default_temperature,
    licence: card.license || card.card.licence || "not stated",
    limits: `uploads up to ${card.limits.max_upload_s} s and ${megabytes(card.limits.max_body_bytes)}, `
      + `generation up to ${card.limits.max_duration_s} s`,
  };
  const container = $("card");
  container.replaceChildren();
  const list = element("dl", undefined, "facts");
  for (const [name, value] of Object.entries(facts)) {
    const row = element("div");
    row.append(element("dt", name), element("dd", formatValue(value)));
    list.append(row);
  }
  container.append(list);
  if (card.metrics) {
    container.append(
      element("h3", "Evaluation metrics"),
      element("p", "From the bundle's evaluation on held-out clips. Lower is better for lsd_db, "
        + "mcd_db and mr_stft; higher for pesq and stoi; x_real_time is speed (above 1 is "
        + "faster than real time).", "hint"),
    );
    for (const [group, values] of Object.entries(card.metrics)) {
      container.append(isPlain(values) ? table(values, group) : table({ [group]: values }));
    }
  } else {
    container.append(element("p", "This bundle's card has no evaluation metrics.", "hint"));
  }
  // The bundle's full card may describe its data apart from the training run; the card's
  // `training` is the run, or else that same data (then shown once).
  const data = isPlain(card.card.data) ? card.card.data : null;
  if (data) container.append(element("h3", "Training data"), table(data));
  if (card.training && JSON.stringify(card.training) !== JSON.stringify(data)) {
    container.append(element("h3", data ? "Training run" : "Training"), table(card.training));
  }
}

/** Resynthesis for conditional models, generation for unconditional ones (all before a card). */
function enableForms(card) {
  const conditional = card ? card.architecture.conditional : null;
  for (const id of ["resynth-button", "record-button", "audio-file"]) $(id).disabled = conditional === false;
  for (const id of ["generate-button", "duration"]) $(id).disabled = conditional === true;
}

function configureForms(card) {
  const conditional = card.architecture.conditional;
  $("original-clip").hidden = !conditional;
  $("duration").max = card.limits.max_duration_s;
  $("duration").min = card.hop_length / card.sample_rate;
  $("resynth-note").textContent = conditional
    ? `Upload a clip (up to ${card.limits.max_upload_s} s) or record one; the student rebuilds it from its mel spectrogram.`
    : "This model is unconditional: it takes no audio in. Use Generate.";
  $("generate-note").textContent = conditional
    ? "This model is conditioned on audio: use Resynthesize. Generation from noise alone needs an unconditional model."
    : `Make up to ${card.limits.max_duration_s} s of audio from noise alone.`;
  $("temperature-hint").textContent = `(empty: the model's default, ${card.default_temperature})`;
  $("speaker-field").hidden = card.speakers.length === 0;
  $("speaker-names").replaceChildren(...card.speakers.map((name) => Object.assign(element("option"), { value: name })));
  if (card.speakers.length && !$("speaker").value) $("speaker").value = card.speakers[0];
}

// ---- Requests ----------------------------------------------------------------------------

function options() {
  const values = {};
  if ($("seed").value !== "") values.seed = Number($("seed").value);
  if ($("temperature").value !== "") values.temperature = Number($("temperature").value);
  if (!$("speaker-field").hidden && $("speaker").value.trim()) values.speaker = $("speaker").value.trim();
  return values;
}

function play(which, blob) {
  if (state.urls[which]) URL.revokeObjectURL(state.urls[which]);
  state.urls[which] = URL.createObjectURL(blob);
  $(`${which}-audio`).src = state.urls[which];
}

async function showSpectrogram(which, blob, label) {
  const canvas = $(`${which}-spectrogram`);
  const caption = $(`${which}-caption`);
  const rate = state.card.sample_rate;
  try {
    const samples = await Spectrogram.decode(await blob.arrayBuffer(), rate);
    const drawn = Spectrogram.draw(canvas, samples, rate);
    const text = `${label}: ${drawn.seconds.toFixed(2)} s, 0 to ${drawn.nyquist} Hz (the model's band), `
      + "time left to right, frequency bottom to top, louder is brighter.";
    canvas.setAttribute("aria-label", `Spectrogram of ${text}`);
    canvas.dataset.rendered = "true";
    caption.textContent = text;
  } catch (error) {
    canvas.dataset.rendered = "false";
    canvas.setAttribute("aria-label", `No spectrogram of ${label}: the browser cannot decode it`);
    caption.textContent = `${label}: this browser cannot decode it for a spectrogram (${error.message}).`;
  }
}

/** Show one request's server-side timing (headers) and its round trip in the browser. */
function recordTiming(kind, response, roundTrip) {
  const generation = Number(response.headers.get("X-Generation-Seconds"));
  const audio = Number(response.headers.get("X-Audio-Seconds"));
  const seed = response.headers.get("X-Seed") || "–";
  const rtf = audio > 0 ? generation / audio : NaN;
  const speed = rtf > 0 ? ` (${(1 / rtf).toFixed(1)}× faster than real time)` : "";
  $("stat-generation").textContent = `${generation.toFixed(3)} s`;
  $("stat-audio").textContent = `${audio.toFixed(2)} s`;
  $("stat-rtf").textContent = `${rtf.toFixed(3)}${rtf < 1 ? speed : ""}`;
  $("stat-round-trip").textContent = `${roundTrip.toFixed(3)} s`;
  $("stat-seed").textContent = seed;
  state.requests += 1;
  const row = document.createElement("tr");
  for (const value of [state.requests, kind, audio.toFixed(2), generation.toFixed(3), rtf.toFixed(3), roundTrip.toFixed(3), seed]) {
    row.append(element("td", String(value)));
  }
  $("history-rows").prepend(row);
  return `${audio.toFixed(2)} s of audio generated in ${generation.toFixed(3)} s on the server, real-time factor ${rtf.toFixed(3)}.`;
}

async function resynthesize(file) {
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  form.append("response_format", "wav");
  for (const [name, value] of Object.entries(options())) form.append(name, String(value));
  const started = performance.now();
  const response = await api("/v1/audio/resynthesize", { method: "POST", body: form });
  const output = await response.blob();
  const roundTrip = (performance.now() - started) / 1000;
  $("original-clip").hidden = false;
  $("output-title").textContent = "Resynthesis";
  play("original", file);
  play("output", output);
  const summary = recordTiming(`resynthesis of ${file.name || "recording"}`, response, roundTrip);
  await Promise.all([
    showSpectrogram("original", file, `the original (${file.name || "recording"})`),
    showSpectrogram("output", output, "the resynthesis"),
  ]);
  setStatus(`Done: ${summary}`);
}

async function generate() {
  const body = { duration_s: Number($("duration").value), response_format: "wav", ...options() };
  const started = performance.now();
  const response = await api("/v1/audio/generate", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const output = await response.blob();
  const roundTrip = (performance.now() - started) / 1000;
  $("original-clip").hidden = true; // generated from noise: nothing to compare with
  $("output-title").textContent = "Generated";
  play("output", output);
  const summary = recordTiming(`generation, ${body.duration_s} s`, response, roundTrip);
  await showSpectrogram("output", output, "the generated audio");
  setStatus(`Done: ${summary}`);
}

// ---- Recording from the microphone -------------------------------------------------------

/** A 16-bit mono WAV file of `samples` (the server reads WAV everywhere; not every browser
 * records a format the server can decode). */
function wavFile(samples, rate, name) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVEfmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 32767, true));
  return new File([view], name, { type: "audio/wav" });
}

async function toggleRecording() {
  const button = $("record-button");
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError(new PlainError("This browser cannot record here (recording needs HTTPS or localhost)."));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(new PlainError("No microphone could be opened (permission denied or none found).", String(error)));
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  const limit = setTimeout(() => recorder.stop(), (state.card ? state.card.limits.max_upload_s : 30) * 1000);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    clearTimeout(limit);
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    button.textContent = "Record from microphone";
    button.setAttribute("aria-pressed", "false");
    run("Resynthesizing the recording", async () => {
      const rate = state.card.sample_rate;
      const samples = await Spectrogram.decode(await new Blob(chunks).arrayBuffer(), rate);
      await resynthesize(wavFile(samples, rate, "recording.wav"));
    });
  };
  recorder.start();
  state.recorder = recorder;
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  showError(null);
  setStatus("Recording… press Stop recording when done.");
}

// ---- Wiring ------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run("Connecting", loadCard);
});
$("resynth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("audio-file").files[0];
  if (!file) {
    showError(new PlainError("Choose an audio file first (or record one)."));
    $("audio-file").focus();
    return;
  }
  run(`Resynthesizing ${file.name}`, () => resynthesize(file));
});
$("generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run("Generating", generate);
});
$("record-button").addEventListener("click", toggleRecording);
run("Connecting", loadCard);
