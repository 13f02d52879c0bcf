// EmoReact upload page: one request per image (with the caption box's text) to /api/predict, two at a time,
// results as they come, with the words read and the channel (picture or words) that drove each emotion;
// a moderator corrects a result with POST /api/feedback, using a key kept for this browser tab only.
"use strict";

const TONES = {
  happy: "#f2b705", sad: "#3a6fd8", angry: "#e03c31", fear: "#7b3fb2",
  surprise: "#f27b1d", disgust: "#3c9d4f", neutral: "#8a94a3", other: "#14a3a3",
};
const SPARE_TONES = ["#d9468f", "#2b8cbe", "#a6761d", "#66a61e", "#e7298a", "#1b9e77"];
const PARALLEL = 2;
const KEY_SLOT = "emoreact-api-key";  // sessionStorage: gone when the tab closes

const page = {
  limits: {
    maxUpload: Number(document.body.dataset.maxUpload),
    kMax: Number(document.body.dataset.kMax),
  },
  thresholds: {},  // label -> decision threshold, from /api/labels
  labels: [],  // label names in output order, from /api/labels
  queue: [],
  running: 0,
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function tone(label) {
  if (TONES[label]) return TONES[label];
  let hash = 0;
  for (const ch of label) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return SPARE_TONES[hash % SPARE_TONES.length];
}

function mib(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  const value = bytes / (1024 * 1024);
  return `${value >= 10 ? value.toFixed(0) : value.toFixed(1)} MB`;
}

function showNotice(message) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_SLOT) || "";
  } catch (error) {
    return "";
  }
}

function authHeaders(extra) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function getJSON(url) {
  const response = await fetch(url, { headers: authHeaders({ Accept: "application/json" }) });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- server facts --------------------------------------------------------------------------

async function loadStatus() {
  const status = document.getElementById("status");
  try {
    const health = await getJSON("/healthz");
    document.getElementById("model-id").textContent = health.model_id;
    document.getElementById("index-size").textContent =
      `${health.index_size.toLocaleString()} images`;
    document.getElementById("device").textContent = health.device;
    status.classList.remove("down");
    page.limits.maxUpload = health.max_upload_bytes;
  } catch (error) {
    status.classList.add("down");
    document.getElementById("model-id").textContent = "server not answering";
    showNotice("The EmoReact server is not answering. Check that it is running, then reload this page.");
  }
  document.getElementById("drop-hint").textContent =
    `JPEG, PNG, WebP, GIF or a clip (animated GIF/WebP/PNG, MP4, MOV, WebM) · up to ${mib(page.limits.maxUpload)} each`;
}

async function loadPolicy() {
  try {
    const policy = await getJSON("/api/labels");
    document.getElementById("policy-rule").textContent = `Rule: ${policy.rule}.`;
    const rows = document.getElementById("policy-rows");
    rows.replaceChildren();
    page.labels = policy.labels.map((label) => label.name);
    for (const label of policy.labels) {
      page.thresholds[label.name] = label.threshold;
      const row = el("tr");
      const name = el("td");
      const chip = el("span", "chip", label.name);
      chip.style.setProperty("--tone", tone(label.name));
      name.append(chip);
      row.append(name, el("td", "", label.threshold.toFixed(2)),
        el("td", "emoji-list", label.allowed.join(" ") || "—"),
        el("td", "emoji-list", label.blocked.join(" ") || "—"));
      rows.append(row);
    }
  } catch (error) {
    document.getElementById("policy-rule").textContent = `The policy could not be loaded: ${error.message}`;
  }
}

// ---- uploads -------------------------------------------------------------------------------

function addFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  showNotice("");
  const results = document.getElementById("results");
  const caption = document.getElementById("caption-input").value;
  for (const file of files) {
    const card = makeCard(file, caption);
    results.prepend(card);
    if (file.size > page.limits.maxUpload) {
      showError(card, "Too large to upload",
        `This file is ${mib(file.size)}; the server takes at most ${mib(page.limits.maxUpload)} per upload.`);
      continue;
    }
    page.queue.push({ file, card, caption });
  }
  document.getElementById("clear").disabled = false;
  pump();
}

function makeCard(file, caption) {
  const card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  if (caption.trim()) {
    const posted = card.querySelector(".posted-caption");
    posted.textContent = caption.trim();
    posted.hidden = false;
  }
  const url = URL.createObjectURL(file);
  card.dataset.objectUrl = url;
  card.querySelector(".filename").textContent = file.name;
  if (file.type.startsWith("video/")) {  // a clip: the browser plays it (if it has the codec)
    const video = el("video");
    video.muted = true;
    video.loop = true;
    video.autoplay = true;
    video.playsInline = true;
    video.addEventListener("loadedmetadata", () => {
      card.querySelector(".meta").textContent =
        `${video.videoWidth} × ${video.videoHeight} px · ${video.duration.toFixed(1)} s · ${mib(file.size)}`;
    });
    video.addEventListener("error", () => {
      card.querySelector(".frame").classList.add("broken");
      video.remove();
      card.querySelector(".meta").textContent = mib(file.size);
    });
    video.src = url;
    card.querySelector(".frame img").replaceWith(video);
    return card;
  }
  const img = card.querySelector(".frame img");
  img.addEventListener("load", () => {
    card.querySelector(".meta").textContent =
      `${img.naturalWidth} × ${img.naturalHeight} px · ${mib(file.size)}`;
  });
  img.addEventListener("error", () => {
    card.querySelector(".frame").classList.add("broken");
    img.remove();
    card.querySelector(".meta").textContent = mib(file.size);
  });
  img.src = url;
  img.alt = `preview of ${file.name}`;
  return card;
}

function pump() {
  while (page.running < PARALLEL && page.queue.length) {
    const job = page.queue.shift();
    page.running += 1;
    predict(job.file, job.card, job.caption).finally(() => {
      page.running -= 1;
      pump();
    });
  }
}

async function predict(file, card, caption) {
  const form = new FormData();
  form.append("image", file, file.name);
  if (caption && caption.trim()) form.append("caption", caption);
  const k = Number(document.getElementById("k-input").value);
  if (Number.isInteger(k) && k >= 0) form.append("k", String(Math.min(k, page.limits.kMax)));
  let response;
  try {
    response = await fetch("/api/predict", { method: "POST", body: form, headers: authHeaders({}) });
  } catch (error) {
    showError(card, "Could not reach the server",
      "The upload did not get through. Check that the EmoReact server is running, then try again.");
    return;
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  const result = body && body.results && body.results[0];
  if (response.ok && result && !result.error) {
    showResult(card, result);
    if (result.timeline) drawFrames(card, file, result.timeline);
    offerCorrection(card, file, result);
  } else if (result && result.error) {
    showError(card, titleFor(response.status), sentence(result.error));
  } else if (body && body.error) {
    showError(card, titleFor(response.status), sentence(body.error));
  } else {
    showError(card, titleFor(response.status),
      response.status === 413 ? `The server refused a file this large (limit ${mib(page.limits.maxUpload)}).`
        : `The server answered with an unexpected error (HTTP ${response.status}).`);
  }
}

function titleFor(status) {
  return {
    400: "Not a usable image", 401: "A key is needed", 403: "This key may not do that", 413: "Too large",
    415: "Format not supported", 429: "Too many requests",
    500: "The server failed on this image",
  }[status] || "Could not analyse this image";
}

function sentence(text) {
  return text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".");
}

function showError(card, title, message) {
  card.classList.add("failed");
  const box = el("div", "error-box");
  box.append(el("strong", "", title), el("span", "", message));
  card.querySelector(".verdict").replaceChildren(box);
}

// ---- one result ----------------------------------------------------------------------------

function showResult(card, result) {
  const verdict = card.querySelector(".verdict");
  const unsure = result.unsure === true;
  const parts = [];
  if (unsure) parts.push(unsureBox(result));
  parts.push(
    section(unsure ? "Emotions (a guess)" : "Detected emotions",
      emotionChips(result.predicted_emotions, result.decided_by || {}), "detected"),
    section("Emotion scores", scoreBars(result.emotion_scores, result.predicted_emotions), "scores"),
    section(unsure ? "Possible reactions (none is certain)" : "Suggested reactions, best first",
      reactionList(result.allowed_emojis, result.reaction_scores || {}, unsure), "allowed-section"),
    section("Blocked reactions", emojiList(result.blocked_emojis, "blocked", "Nothing is blocked."),
      "blocked-section"),
  );
  if (result.clip) parts.push(section(clipTitle(result.clip), frameStrip(result), "timeline"));
  const words = wordsRead(result.text);
  if (words) parts.push(section("Words in the post", words, "words"));
  parts.push(
    section(`Nearest indexed images (${result.neighbours.length}${result.neighbours_exact === false ?
      ", approximate search: nearer ones may exist" : ""})`, neighbourGrid(result.neighbours), "near"),
  );
  verdict.replaceChildren(...parts);
  verdict.classList.toggle("unsure", unsure);
  card.classList.toggle("unsure", unsure);
  card.dataset.predicted = result.predicted_emotions.join(",");
  requestAnimationFrame(() => {
    for (const fill of verdict.querySelectorAll(".bar-fill")) fill.style.width = fill.dataset.width;
  });
}

// ---- a clip's frames -------------------------------------------------------------------------

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

function clipTitle(clip) {
  const used = `${clip.frames_used} of ${clip.frame_count} frame${clip.frame_count === 1 ? "" : "s"}`;
  return `Timeline: ${clip.format} clip, ${seconds(clip.duration_ms)}, ${used}` +
    (clip.truncated ? " (decoding stopped at the time limit: the answer uses the frames read until then)" : "");
}

// One cell per chosen frame: the frame (drawn by drawFrames once the browser has decoded it), its time
// and what that frame alone shows; the frame that carried a predicted emotion most is marked with it.
function frameStrip(result) {
  const strip = el("ol", "frame-strip");
  const peaks = (result.clip && result.clip.peaks) || {};
  for (const moment of result.timeline) {
    const cell = el("li", "moment");
    cell.dataset.tMs = String(moment.t_ms);
    const frame = el("canvas", "moment-frame");
    frame.width = 96;
    frame.height = 96;
    const shown = moment.emotions.length ? moment.emotions.join(" + ") : "nothing over its threshold";
    const chips = el("div", "chips");
    for (const label of moment.emotions) {
      const chip = el("span", "chip", label);
      chip.style.setProperty("--tone", tone(label));
      if (peaks[label] === moment.t_ms && result.predicted_emotions.includes(label)) chip.classList.add("peak");
      chips.append(chip);
    }
    cell.title = `${seconds(moment.t_ms)}: ${shown}`;
    cell.append(frame, el("span", "moment-time", seconds(moment.t_ms)), chips);
    strip.append(cell);
  }
  return strip;
}

// Draws each timeline cell's frame from the uploaded file itself: an animation through WebCodecs'
// ImageDecoder, a video by seeking a hidden <video>. A browser that cannot leaves the cells without
// pictures; the times and emotions are there either way.
async function drawFrames(card, file, timeline) {
  const cells = [...card.querySelectorAll(".frame-strip .moment")];
  if (!cells.length) return;
  try {
    if (file.type.startsWith("video/")) await drawVideoFrames(card, cells);
    else if ("ImageDecoder" in window) await drawImageFrames(file, cells);
  } catch (error) {
    card.querySelector(".frame-strip").classList.add("no-pictures");
  }
}

async function drawImageFrames(file, cells) {
  const decoder = new ImageDecoder({ data: await file.arrayBuffer(), type: file.type });
  await decoder.tracks.ready;
  const count = decoder.tracks.selectedTrack.frameCount;
  let index = 0;
  let frame = (await decoder.decode({ frameIndex: 0 })).image;
  for (const cell of cells) {
    const wanted = Number(cell.dataset.tMs) * 1000;  // microseconds, as VideoFrame timestamps are
    while (index + 1 < count) {
      const next = (await decoder.decode({ frameIndex: index + 1 })).image;
      if (next.timestamp > wanted) {
        next.close();
        break;
      }
      frame.close();
      frame = next;
      index += 1;
    }
    paint(cell, frame, frame.displayWidth, frame.displayHeight);
  }
  frame.close();
  decoder.close();
}

async function drawVideoFrames(card, cells) {
  const video = el("video");
  video.muted = true;
  video.src = card.dataset.objectUrl;
  await new Promise((resolve, reject) => {
    video.addEventListener("loadeddata", resolve, { once: true });
    video.addEventListener("error", reject, { once: true });
  });
  for (const cell of cells) {
    video.currentTime = Number(cell.dataset.tMs) / 1000;
    await new Promise((resolve) => video.addEventListener("seeked", resolve, { once: true }));
    paint(cell, video, video.videoWidth, video.videoHeight);
  }
}

function paint(cell, source, width, height) {
  const canvas = cell.querySelector("canvas");
  const scale = Math.min(canvas.width / width, canvas.height / height);
  const w = Math.round(width * scale);
  const h = Math.round(height * scale);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(source, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  cell.classList.add("drawn");
}

function wordsRead(text) {
  if (!text || (!text.caption && !(text.ocr || []).length)) return null;
  const box = el("div", "words-read");
  if (text.caption) {
    const line = el("p", "caption-line");
    line.append(el("span", "muted", "Caption: "), el("q", "", text.caption));
    box.append(line);
  }
  if ((text.ocr || []).length) {
    box.append(el("p", "muted", "Read in the image:"));
    const list = el("ul", "ocr-lines");
    for (const line of text.ocr) {
      const item = el("li", "");
      item.append(el("q", "", line.text), el("span", "fit", line.score.toFixed(2)));
      list.append(item);
    }
    box.append(list);
  }
  return box;
}

function section(title, body, extra) {
  const node = el("section", extra || "");
  node.append(el("h3", "", title), body);
  return node;
}

const CHANNEL_NAMES = { image: "from the picture", text: "from the words", frames: "from the frames" };

function emotionChips(predicted, decidedBy) {
  const chips = el("div", "chips emotions");
  if (!predicted.length) {
    chips.append(el("span", "chip none", "No emotion passed its threshold"));
  }
  for (const label of predicted) {
    const chip = el("span", "chip", label);
    chip.style.setProperty("--tone", tone(label));
    const channel = decidedBy[label];
    if (channel === "text" || channel === "frames") {  // a still's picture is every answer's: not marked
      chip.append(el("span", "channel", CHANNEL_NAMES[channel]));
      chip.dataset.channel = channel;
    }
    chips.append(chip);
  }
  return chips;
}

function scoreBars(scores, predicted) {
  const wrap = el("div");
  const bars = el("div", "bars");
  for (const [label, score] of Object.entries(scores)) {
    const on = predicted.includes(label);
    const track = el("div", "bar-track");
    track.setAttribute("role", "meter");
    track.setAttribute("aria-label", label);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "1");
    track.setAttribute("aria-valuenow", String(score));
    const fill = el("div", on ? "bar-fill on" : "bar-fill");
    fill.dataset.width = `${(score * 100).toFixed(1)}%`;
    fill.style.setProperty("--tone", tone(label));
    track.append(fill);
    if (label in page.thresholds) {
      const tick = el("div", "bar-threshold");
      tick.style.left = `${(page.thresholds[label] * 100).toFixed(1)}%`;
      tick.title = `threshold ${page.thresholds[label].toFixed(2)}`;
      track.append(tick);
    }
    bars.append(el("span", on ? "bar-label on" : "bar-label", label), track,
      el("span", on ? "bar-value on" : "bar-value", score.toFixed(2)));
  }
  wrap.append(bars);
  if (Object.keys(page.thresholds).length) {
    wrap.append(el("p", "legend muted", "The thin mark on each bar is the label's decision threshold."));
  }
  return wrap;
}

function unsureBox(result) {
  const box = el("div", "unsure-box");
  const nearest = result.neighbours.length ? result.neighbours[0].similarity : null;
  const detail = nearest === null ? "" :
    ` Its nearest indexed image has similarity ${nearest.toFixed(2)}.`;
  box.append(el("strong", "", "This image is unlike anything in the index."),
    el("span", "", `It is farther from its nearest indexed image than ${Math.round(result.novelty * 100)}% of ` +
      `indexed images are from theirs.${detail} The emotions and reactions below are guesses: check them ` +
      "before using any."));
  return box;
}

function reactionList(emojis, scores, unsure) {
  const list = el("div", unsure ? "emojis allowed tentative" : "emojis allowed");
  if (!emojis.length) list.append(el("span", "empty", "No reaction is safe to suggest."));
  emojis.forEach((emoji, rank) => {
    const item = el("span", rank < 3 && !unsure ? "emoji top" : "emoji");
    item.append(el("span", "glyph", emoji));
    const score = scores[emoji];
    if (score !== undefined) item.append(el("span", "fit", score.toFixed(2)));
    item.dataset.score = score === undefined ? "" : String(score);
    item.title = unsure ? `${emoji}: a guess, the image is unlike the indexed ones`
      : `${emoji} fits this image (fit score ${score === undefined ? "?" : score.toFixed(2)})`;
    list.append(item);
  });
  return list;
}

// ---- corrections ---------------------------------------------------------------------------

function offerCorrection(card, file, result) {
  const form = card.querySelector(".correction");
  if (!form || !page.labels.length) return;
  const boxes = form.querySelector(".label-boxes");
  boxes.replaceChildren();
  for (const label of page.labels) {
    const wrap = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.value = label;
    box.name = "label";
    box.checked = result.predicted_emotions.includes(label);
    wrap.append(box, document.createTextNode(label));
    boxes.append(wrap);
  }
  form.hidden = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendCorrection(form, file);
  });
}

async function sendCorrection(form, file) {
  const state = form.querySelector(".correction-state");
  const chosen = [...form.querySelectorAll("input[name=label]:checked")].map((box) => box.value);
  state.className = "correction-state";
  if (!chosen.length) {
    state.classList.add("bad");
    state.textContent = "Tick at least one emotion (neutral or other if none fits).";
    return;
  }
  if (!apiKey()) {
    state.classList.add("bad");
    state.textContent = "Enter your moderator key above first; it is kept for this tab only.";
    document.getElementById("key-input").focus();
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("labels", chosen.join(","));
  const note = form.querySelector(".note").value.trim();
  if (note) body.append("note", note);
  const button = form.querySelector("button");
  button.disabled = true;
  state.textContent = "Sending…";
  try {
    const response = await fetch("/api/feedback", { method: "POST", body, headers: authHeaders({}) });
    const answer = await response.json().catch(() => ({}));
    if (response.status === 201) {
      state.classList.add("ok");
      state.textContent = `Saved as correction #${answer.id}: ${answer.labels.join(", ")} ` +
        `(image ${answer.image_id} in the index).`;
      form.dataset.feedbackId = String(answer.id);
      form.dataset.imageId = String(answer.image_id);
    } else {
      if (response.status === 401) forgetKey();
      state.classList.add("bad");
      state.textContent = `${titleFor(response.status)}: ${sentence(answer.error || `HTTP ${response.status}`)}`;
    }
  } catch (error) {
    state.classList.add("bad");
    state.textContent = "The correction did not reach the server; try again.";
  } finally {
    button.disabled = false;
  }
}

function showKeyState() {
  const has = Boolean(apiKey());
  document.getElementById("key-form").classList.toggle("has-key", has);
  document.getElementById("key-state").textContent = has ? "Key set for this tab."
    : "Corrections need an API key. It is kept in this browser tab only.";
  document.getElementById("key-forget").hidden = !has;
}

function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_SLOT);
  } catch (error) { /* storage off: nothing kept */ }
  showKeyState();
}

function emojiList(emojis, kind, emptyText) {
  const list = el("div", `emojis ${kind}`);
  if (!emojis.length) list.append(el("span", "empty", emptyText));
  for (const emoji of emojis) {
    const item = el("span", "emoji");
    item.append(el(kind === "blocked" ? "s" : "span", "glyph", emoji));
    item.title = kind === "blocked" ? `${emoji} is blocked for this image` : `${emoji} fits this image`;
    list.append(item);
  }
  return list;
}

function neighbourGrid(neighbours) {
  const grid = el("div", "neighbours");
  if (!neighbours.length) grid.append(el("span", "empty", "The index is empty."));
  for (const n of neighbours) {
    const figure = el("figure", "neighbour");
    const thumb = el("div", "thumb");
    const img = el("img");
    img.loading = "lazy";
    img.alt = `indexed image ${n.id}${n.labels.length ? ` (${n.labels.join(", ")})` : ""}`;
    img.addEventListener("error", () => {
      thumb.classList.add("broken");
      img.remove();
    });
    img.src = `/api/images/${encodeURIComponent(n.id)}/thumbnail`;
    thumb.append(img);
    const caption = el("figcaption");
    caption.append(el("span", "labels", n.labels.length ? n.labels.join(" + ") : "unlabelled"),
      el("span", "sim", n.similarity.toFixed(3)));
    if (n.clip) {  // a stored clip: its thumbnail is its middle frame
      thumb.append(el("span", "clip-badge", `${n.clip.format} · ${seconds(n.clip.duration_ms)}`));
      thumb.classList.add("clip");
    }
    caption.title = `id ${n.id} · ${n.split} · cosine similarity ${n.similarity.toFixed(3)}`;
    figure.append(thumb, caption);
    grid.append(figure);
  }
  return grid;
}

// ---- wiring --------------------------------------------------------------------------------

function clearResults() {
  page.queue.length = 0;
  for (const card of document.querySelectorAll("#results .card")) {
    if (card.dataset.objectUrl) URL.revokeObjectURL(card.dataset.objectUrl);
  }
  document.getElementById("results").replaceChildren();
  document.getElementById("clear").disabled = true;
  showNotice("");
}

function wire() {
  const input = document.getElementById("file-input");
  const zone = document.getElementById("dropzone");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.getElementById("clear").addEventListener("click", clearResults);
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    if (!input.value.trim()) return;
    try {
      sessionStorage.setItem(KEY_SLOT, input.value.trim());
    } catch (error) {
      showNotice("This browser keeps no session storage here; the key cannot be kept.");
    }
    input.value = "";
    showKeyState();
  });
  document.getElementById("key-forget").addEventListener("click", forgetKey);
  showKeyState();
}

wire();
loadStatus();
loadPolicy();
