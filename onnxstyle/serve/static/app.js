// The onnxstyle page: submit a job, follow its events, show the preview and the result.
// Events are read with fetch rather than EventSource so that the bearer token can be sent
// as a header (EventSource cannot send headers); reconnects carry Last-Event-ID.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { job: null, eventsSeen: 0, previewUrl: null, previewBusy: false, log: [] };
window.onnxstyleLog = state.log; // what the page has handled, for tests and debugging

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function settingsFromForm() {
  const settings = {
    size: parseInt($("size").value, 10),
    iterations: parseInt($("iterations").value, 10),
    init: $("init").value,
  };
  const sw = $("style-weight").value.trim();
  if (sw !== "") settings.style_weight = parseFloat(sw);
  if ($("preserve-color").checked) settings.preserve_color = "luminance";
  return settings;
}

async function submitJob(event) {
  event.preventDefault();
  showError("");
  const body = new FormData();
  body.append("content", $("content").files[0]);
  body.append("style", $("style").files[0]);
  body.append("settings", JSON.stringify(settingsFromForm()));
  $("submit").disabled = true;
  try {
    const response = await fetch("/v1/jobs", { method: "POST", body, headers: authHeaders() });
    const job = await response.json();
    if (!response.ok) throw new Error(job.error || response.statusText);
    startJob(job);
  } catch (e) {
    showError(String(e.message || e));
    $("submit").disabled = false;
  }
}

function startJob(job) {
  state.job = job.id;
  state.eventsSeen = 0;
  state.log.length = 0;
  $("result").removeAttribute("src");
  $("preview").removeAttribute("src");
  $("download").hidden = true;
  $("cancel").disabled = false;
  render(job);
  follow(job.id);
}

function render(job) {
  $("status").textContent = job.status;
  $("step").textContent = "step " + job.step + " / " + job.iterations;
  $("loss").textContent = job.loss == null ? "" : "loss " + Number(job.loss).toPrecision(4);
  $("eta").textContent = job.eta == null ? "" : "eta " + Math.round(job.eta) + " s";
  $("progress").max = job.iterations || 1;
  $("progress").value = job.step;
  if (job.preview && job.preview !== state.previewUrl) loadPreview(job.preview);
}

async function fetchBlobUrl(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}

async function loadPreview(url) {
  if (state.previewBusy) return; // the next event brings a newer one anyway
  state.previewBusy = true;
  try {
    const blobUrl = await fetchBlobUrl(url);
    if (blobUrl) {
      const old = $("preview").src;
      $("preview").src = blobUrl;
      state.previewUrl = url;
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    }
  } finally {
    state.previewBusy = false;
  }
}

async function finish(job) {
  $("cancel").disabled = true;
  $("submit").disabled = false;
  if (job.status === "done") {
    const blobUrl = await fetchBlobUrl(job.result);
    if (blobUrl) {
      $("result").src = blobUrl;
      $("download").href = blobUrl;
      $("download").download = "stylized-" + job.id.slice(0, 8) + ".png";
      $("download").hidden = false;
    }
    if (job.warning) showError(job.warning);
  } else if (job.error) {
    showError(job.status + ": " + job.error);
  }
}

// One parsed SSE block -> {id, event, data}.
function parseBlock(block) {
  const out = { id: null, event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") out.id = value;
    else if (field === "event") out.event = value;
    else if (field === "data") out.data += (out.data ? "\n" : "") + value;
  }
  return out;
}

// Handle one event; true when the job has ended.
function handle(event) {
  if (!event.data) return false;
  const job = JSON.parse(event.data);
  state.eventsSeen += 1;
  $("events").textContent = String(state.eventsSeen);
  state.log.push({ event: event.event, status: job.status, step: job.step });
  render(job);
  if (["done", "failed", "cancelled"].includes(event.event)) {
    finish(job);
    return true;
  }
  return false;
}

async function follow(jobId) {
  let lastId = "0";
  while (state.job === jobId) {
    try {
      const headers = Object.assign({ "Last-Event-ID": lastId }, authHeaders());
      const response = await fetch("/v1/jobs/" + jobId + "/events", { headers });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        showError(body.error || response.statusText);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event.id !== null) lastId = event.id;
          if (handle(event)) return;
        }
      }
    } catch (e) {
      // The connection dropped (server restart, network): reconnect and resume.
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function cancelJob() {
  if (!state.job) return;
  const response = await fetch("/v1/jobs/" + state.job, { method: "DELETE", headers: authHeaders() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    showError(body.error || response.statusText);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("job-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", cancelJob);
});
