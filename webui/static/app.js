// facesketch page. Plain JS, no libraries, no external requests.
// One conversion in flight at a time: a newer request waits for the current
// one (files: the latest wins; camera: the next frame is taken when the
// previous result has arrived).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), error: $("error"), direction: $("direction"),
    fileInput: $("file-input"), cameraBtn: $("camera-btn"), download: $("download"),
    drop: $("drop-zone"), inputImg: $("input-img"), video: $("video"), dropHint: $("drop-hint"),
    inputSize: $("input-size"), resultImg: $("result-img"), resultHint: $("result-hint"),
    resultDirection: $("result-direction"), domain: $("domain"), confidence: $("confidence"),
    backend: $("backend"), latency: $("latency"), roundtrip: $("roundtrip"), canvas: $("canvas"),
    align: $("align"), paste: $("paste"), faceBox: $("face-box"), face: $("face"),
  };
  const maxUpload = parseInt(document.body.dataset.maxUpload || "0", 10);
  const state = {
    ready: false, inFlight: false, pending: null, lastInput: null,
    inputUrl: null, resultUrl: null, stream: null, frames: 0,
    faceBox: null, sentSize: null,   // last X-Face-Box (video: sent back to steady the crop)
  };

  function showError(msg) {
    el.error.textContent = msg;
    el.error.hidden = !msg;
  }

  function setStatus(text, cls) {
    el.status.textContent = text;
    el.status.className = "status" + (cls ? " " + cls : "");
  }

  // ------------------------------------------------------------ health
  async function pollHealth() {
    try {
      const r = await fetch("/api/health", { cache: "no-store" });
      const body = await r.json();
      if (r.ok) {
        state.ready = true;
        setStatus("ready", "ready");
        el.backend.textContent = body.backend;
        if (state.pending) { const p = state.pending; state.pending = null; convert(p); }
        return;
      }
      if (body.code === "model_failed") { setStatus("model failed to load", "failed"); showError(body.error); return; }
      setStatus("loading the model\u2026");
    } catch (e) {
      setStatus("server not reachable; retrying\u2026", "failed");
    }
    setTimeout(pollHealth, 1000);
  }

  // ------------------------------------------------------------ convert
  function setInputPreview(blob) {
    if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
    state.inputUrl = URL.createObjectURL(blob);
    el.inputImg.onload = () => { el.inputSize.textContent = `(${el.inputImg.naturalWidth}\u00d7${el.inputImg.naturalHeight})`; };
    el.inputImg.src = state.inputUrl;
    el.inputImg.hidden = false;
    el.video.hidden = true;
    el.dropHint.hidden = true;
  }

  function setResult(blob, headers, roundtripMs) {
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = URL.createObjectURL(blob);
    el.resultImg.src = state.resultUrl;
    el.resultImg.hidden = false;
    el.resultHint.hidden = true;
    const direction = headers.get("X-Direction") || "";
    const domain = headers.get("X-Detected-Domain") || "";
    const conf = parseFloat(headers.get("X-Confidence") || "NaN");
    const lat = parseFloat(headers.get("X-Latency-Ms") || "NaN");
    el.domain.textContent = domain;
    el.domain.dataset.domain = domain;
    el.confidence.textContent = isNaN(conf) ? "\u2013" : (conf * 100).toFixed(1) + " %";
    el.backend.textContent = headers.get("X-Backend") || "\u2013";
    el.latency.textContent = isNaN(lat) ? "\u2013" : lat.toFixed(1) + " ms";
    el.roundtrip.textContent = roundtripMs.toFixed(0) + " ms";
    el.resultDirection.textContent = direction ? "(" + direction.replace("2", " \u2192 ") + ")" : "";
    el.resultImg.dataset.direction = direction;
    el.download.href = state.resultUrl;
    el.download.download = "facesketch-" + (direction || "result") + ".png";
    el.download.classList.remove("disabled");
    el.download.setAttribute("aria-disabled", "false");
  }

  // The face box (x,y,w,h,angle in the sent image's pixels) over the input as shown
  // (object-fit: contain inside the frame).
  function drawFaceBox() {
    const box = state.faceBox, size = state.sentSize;
    const shown = state.stream ? el.video : el.inputImg;
    if (!box || !size || shown.hidden) { el.faceBox.hidden = true; return; }
    const fw = shown.clientWidth, fh = shown.clientHeight;
    const s = Math.min(fw / size[0], fh / size[1]);
    const ox = shown.offsetLeft + (fw - size[0] * s) / 2, oy = shown.offsetTop + (fh - size[1] * s) / 2;
    const [x, y, w, h, angle] = box;
    Object.assign(el.faceBox.style, {
      left: (ox + x * s) + "px", top: (oy + y * s) + "px", width: (w * s) + "px", height: (h * s) + "px",
      transform: `rotate(${angle}deg)`,
    });
    el.faceBox.hidden = false;
  }
  window.addEventListener("resize", drawFaceBox);

  function imageSize(blob) {
    return new Promise((resolve) => {
      if (!window.createImageBitmap) { resolve(null); return; }
      createImageBitmap(blob).then((b) => { const s = [b.width, b.height]; b.close(); resolve(s); }, () => resolve(null));
    });
  }

  // Send one image; if one is already in flight, keep only the newest to send next.
  async function convert(blob) {
    if (!state.ready) { state.pending = blob; setStatus("waiting for the model\u2026"); return; }
    if (state.inFlight) { state.pending = blob; return; }
    if (maxUpload && blob.size > maxUpload) {
      showError(`That file is ${(blob.size / 1048576).toFixed(1)} MiB; the limit is ${(maxUpload / 1048576).toFixed(1)} MiB.`);
      return;
    }
    state.inFlight = true;
    const fd = new FormData();
    fd.append("image", blob, blob.name || "image");
    fd.append("direction", el.direction.value);
    fd.append("align", el.align.value);
    if (el.paste.checked) fd.append("paste", "1");
    if (state.stream && state.faceBox) fd.append("face_box", state.faceBox.join(","));
    const t0 = performance.now();
    let retryMs = 0;
    try {
      const r = await fetch("/api/translate", { method: "POST", body: fd, headers: { Accept: "image/png" } });
      if (!r.ok) {
        let msg = `error ${r.status}`;
        try { const body = await r.json(); msg = body.error || msg; } catch (e) { /* not JSON */ }
        if (r.status === 503 || r.status === 429) {   // busy, or this client is over its share
          retryMs = 1000 * Math.max(1, parseInt(r.headers.get("Retry-After") || "1", 10));
          msg += ` (retrying in ${retryMs / 1000} s)`;
        }
        showError(msg);
      } else {
        const out = await r.blob();
        const boxText = r.headers.get("X-Face-Box");
        state.faceBox = boxText ? boxText.split(",").map(Number) : null;
        state.sentSize = state.stream ? [el.canvas.width, el.canvas.height] : await imageSize(blob);
        el.face.textContent = r.headers.get("X-Face") || "\u2013";
        el.faceBox.dataset.box = boxText || "";
        drawFaceBox();
        setResult(out, r.headers, performance.now() - t0);
        showError("");
      }
    } catch (e) {
      showError("The server could not be reached: " + e.message);
      retryMs = state.stream ? 2000 : 0;
    } finally {
      state.inFlight = false;
    }
    if (state.pending) { const p = state.pending; state.pending = null; convert(p); }
    else if (state.stream) { setTimeout(() => requestAnimationFrame(captureFrame), retryMs); }
    else if (retryMs) { setTimeout(() => { if (!state.inFlight && !state.pending && state.lastInput === blob) convert(blob); }, retryMs); }
  }

  function useFile(file) {
    if (!file) return;
    stopCamera();
    state.faceBox = null;
    el.faceBox.hidden = true;
    state.lastInput = file;
    showError("");
    setInputPreview(file);
    convert(file);
  }

  // ------------------------------------------------------------ file / drop / paste
  el.fileInput.addEventListener("change", () => { useFile(el.fileInput.files[0]); el.fileInput.value = ""; });
  ["dragenter", "dragover"].forEach((t) => el.drop.addEventListener(t, (e) => {
    e.preventDefault(); el.drop.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((t) => el.drop.addEventListener(t, (e) => {
    e.preventDefault(); el.drop.classList.remove("dragover");
  }));
  el.drop.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) useFile(f);
  });
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("paste", (e) => {
    const item = Array.from((e.clipboardData && e.clipboardData.items) || []).find((i) => i.type.startsWith("image/"));
    if (item) useFile(item.getAsFile());
  });
  el.direction.addEventListener("change", () => { if (state.lastInput && !state.stream) convert(state.lastInput); });
  [el.align, el.paste].forEach((c) => c.addEventListener("change", () => {
    state.faceBox = null;
    if (state.lastInput && !state.stream) convert(state.lastInput);
  }));

  // ------------------------------------------------------------ camera
  function captureFrame() {
    if (!state.stream || state.inFlight || !el.video.videoWidth) {
      if (state.stream && !state.inFlight) requestAnimationFrame(captureFrame);
      return;
    }
    const w = el.video.videoWidth, h = el.video.videoHeight;
    const scale = Math.min(1, 512 / Math.max(w, h));   // the model works at a few hundred px
    el.canvas.width = Math.round(w * scale);
    el.canvas.height = Math.round(h * scale);
    el.canvas.getContext("2d").drawImage(el.video, 0, 0, el.canvas.width, el.canvas.height);
    el.canvas.toBlob((blob) => {
      if (!blob || !state.stream) return;
      state.lastInput = blob;
      state.frames += 1;
      convert(blob);
    }, "image/jpeg", 0.9);
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser cannot use a camera here (it needs https or localhost).");
      return;
    }
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user", width: { ideal: 640 } }, audio: false });
    } catch (e) {
      showError("Camera unavailable: " + e.message);
      state.stream = null;
      return;
    }
    showError("");
    el.video.srcObject = state.stream;
    el.video.hidden = false;
    el.inputImg.hidden = true;
    el.dropHint.hidden = true;
    el.inputSize.textContent = "(camera)";
    el.cameraBtn.textContent = "Stop camera";
    el.cameraBtn.classList.add("on");
    el.video.onloadedmetadata = () => requestAnimationFrame(captureFrame);
  }

  function stopCamera() {
    if (!state.stream) return;
    state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    state.faceBox = null;
    el.faceBox.hidden = true;
    el.video.srcObject = null;
    el.video.hidden = true;
    el.cameraBtn.textContent = "Start camera";
    el.cameraBtn.classList.remove("on");
    // Keep the last converted frame visible as the input.
    if (state.lastInput) setInputPreview(state.lastInput);
  }

  el.cameraBtn.addEventListener("click", () => { if (state.stream) stopCamera(); else startCamera(); });

  pollHealth();
})();
