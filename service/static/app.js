"use strict";
// The demo page: calls the public API only (GET /v1/models, POST /v1/audio/resynthesize,
// POST /v1/audio/generate), plays the audio, draws spectrograms, reports timings and errors.

const $ = (id) => document.getElementById(id);
const { element, megabytes } = ModelCard;
const state = { card: null, recorder: null, requests: 0, urls: {} };

// ---- Talking to the API ------------------------------------------------------------------

/** An API failure already put in plain words (`message`), with the server's own (`detail`). */
class PlainError extends Error {
  constructor(message, detail = "", retryAfter = null) {
    super(message);
    this.detail = detail;
    this.retryAfter = retryAfter; // seconds, from a 503's Retry-After
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
    const retryAfter = response.status === 503 ? Number(response.headers.get("Retry-After")) || 1 : null;
    throw new PlainError(plainWords(response.status, error, retryAfter, key), detail, retryAfter);
  }
  return response;
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
    return `That audio is too long: this server accepts${most}. Trim it and try again.`;
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
    if (code === "model_failed" || code === "not_running") {
      return "The model failed to start on the server; it needs a restart by whoever runs it.";
    }
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
    detail.textContent = `Details: ${error.detail}`;
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
  $("results").setAttribute("aria-busy", "true");
  document.querySelectorAll("#try button").forEach((button) => { button.disabled = true; });
  try {
    await action();
    return null;
  } catch (error) {
    showError(error instanceof PlainError ? error : new PlainError(`Unexpected problem: ${error.message}`));
    console.error(error);
    return error;
  } finally {
    $("results").removeAttribute("aria-busy");
    enableForms(state.card);
  }
}

// ---- The model card ----------------------------------------------------------------------

async function loadCard() {
  const response = await api("/v1/models");
  const card = (await response.json()).data[0];
  state.card = card;
  $("model-summary").textContent = ModelCard.summary(card);
  ModelCard.render(card, $("card"));
  configureForms(card);
  setStatus(`Connected to ${card.id}.`);
}

/** Resynthesis for conditional models, generation for unconditional ones; neither before
 * the card has loaded (nothing could work yet: wrong key, or the model still loading). */
function enableForms(card) {
  const conditional = card ? card.architecture.conditional : null;
  for (const id of ["resynth-button", "record-button", "audio-file"]) $(id).disabled = conditional !== true;
  for (const id of ["generate-button", "duration"]) $(id).disabled = conditional !== false;
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
    delete button.dataset.recording;
    run("Resynthesizing the recording", async () => {
      const rate = state.card.sample_rate;
      let samples;
      try {
        samples = await Spectrogram.decode(await new Blob(chunks).arrayBuffer(), rate);
      } catch (error) {
        throw new PlainError("The recording came out empty or unreadable. Try recording again.", String(error));
      }
      await resynthesize(wavFile(samples, rate, "recording.wav"));
    });
  };
  recorder.start();
  state.recorder = recorder;
  button.textContent = "Stop recording";
  button.dataset.recording = "true";
  showError(null);
  setStatus("Recording… press Stop recording when done.");
}

// ---- Wiring ------------------------------------------------------------------------------

/** Load the card; while the model is loading (503), try again when the server says to. */
async function connect(attempts = 20) {
  const error = await run("Connecting", loadCard);
  if (error instanceof PlainError && error.retryAfter && attempts > 1) {
    setStatus(`This page tries again in ${error.retryAfter} s.`);
    setTimeout(() => connect(attempts - 1), error.retryAfter * 1000);
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
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
connect();
