// Drawing pad -> PNG -> POST /predict?explain=true. All preprocessing happens on the server
// (mnist_mlops/data/mnist_style.py), so the browser only sends what the user drew.
(() => {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const seen = document.getElementById("seen");
  const seenCtx = seen.getContext("2d");
  const bars = document.getElementById("bars");
  const errorBox = document.getElementById("error");
  const feedbackBox = document.getElementById("feedback");
  const thanks = document.getElementById("thanks");
  let drawing = false, last = null, inked = false, lastResult = null;

  function clearPad() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    inked = false;
  }
  function point(event) {
    const box = pad.getBoundingClientRect();
    return { x: (event.clientX - box.left) * pad.width / box.width,
             y: (event.clientY - box.top) * pad.height / box.height };
  }
  function stroke(from, to) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(from.x, from.y); ctx.lineTo(to.x, to.y); ctx.stroke();
    inked = true;
  }
  pad.addEventListener("pointerdown", (e) => {
    drawing = true; last = point(e); stroke(last, last); pad.setPointerCapture(e.pointerId);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return; const p = point(e); stroke(last, p); last = p;
  });
  ["pointerup", "pointercancel", "pointerleave"].forEach((t) =>
    pad.addEventListener(t, () => { drawing = false; }));

  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.innerHTML = `<span>${d}</span><div class="track"><div class="fill"></div></div>` +
                   `<span class="pct">–</span>`;
    bars.appendChild(li);
  }
  const labels = document.getElementById("labels");
  for (let d = 0; d < 10; d++) {
    const b = document.createElement("button");
    b.textContent = d; b.dataset.label = d;
    b.addEventListener("click", () => sendFeedback(d));
    labels.appendChild(b);
  }

  function render(result) {
    const probs = result.probabilities;
    document.getElementById("digit").textContent = result.predicted;
    document.getElementById("confidence").textContent =
      `${(probs[result.predicted] * 100).toFixed(1)}% confident`;
    [...bars.children].forEach((li, d) => {
      li.classList.toggle("top", d === result.predicted);
      li.querySelector(".fill").style.width = `${(probs[d] * 100).toFixed(1)}%`;
      li.querySelector(".pct").textContent = `${(probs[d] * 100).toFixed(1)}%`;
    });
    drawSeen(result);
    feedbackBox.hidden = false; thanks.textContent = "";
  }
  function drawSeen(result) {
    if (!result.image) return;
    const overlay = document.getElementById("overlay").checked;
    const img = seenCtx.createImageData(28, 28);
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) {
      const i = (r * 28 + c) * 4, v = result.image[r][c];
      const s = overlay && result.saliency ? result.saliency[r][c] : 0;
      img.data[i] = Math.min(255, v * (1 - s) + 255 * s);   // saliency tints red
      img.data[i + 1] = v * (1 - s); img.data[i + 2] = v * (1 - s); img.data[i + 3] = 255;
    }
    const tmp = document.createElement("canvas"); tmp.width = 28; tmp.height = 28;
    tmp.getContext("2d").putImageData(img, 0, 0);
    seenCtx.imageSmoothingEnabled = false;
    seenCtx.drawImage(tmp, 0, 0, seen.width, seen.height);
  }
  document.getElementById("overlay").addEventListener("change", () => {
    if (lastResult) drawSeen(lastResult);
  });

  async function predict() {
    errorBox.textContent = "";
    if (!inked) { errorBox.textContent = "Draw a digit first."; return; }
    const blob = await new Promise((ok) => pad.toBlob(ok, "image/png"));
    const response = await fetch("/predict?explain=true", {
      method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
    const body = await response.json();
    if (!response.ok) { errorBox.textContent = body.detail || response.statusText; return; }
    lastResult = body; render(body);
  }
  async function sendFeedback(label) {
    if (!lastResult) return;
    const response = await fetch("/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: lastResult.id, label, feedback_token: lastResult.feedback_token }) });
    thanks.textContent = response.ok ? `Thanks: recorded ${label}.` : "Could not record feedback.";
  }
  async function showModel() {
    const line = document.getElementById("model-line");
    const response = await fetch("/model");
    if (!response.ok) { line.textContent = "no model loaded yet"; return; }
    const m = await response.json();
    const acc = m.metrics["test/acc"];
    line.textContent = `model ${m.name} ` + (m.version ? `v${m.version}` : `(run ${m.run_id.slice(0, 8)})`) +
      ` · ${m.source}` + (acc !== undefined ? ` · test accuracy ${(acc * 100).toFixed(2)}%` : "");
  }

  document.getElementById("predict").addEventListener("click", predict);
  document.getElementById("clear").addEventListener("click", () => {
    clearPad(); errorBox.textContent = ""; });
  clearPad(); showModel();
})();
