// The review station's page: keyboard-first relabelling against the JSON API (no library, no build step).
"use strict";
(function () {
  const W = window.WBC;
  const token = new URLSearchParams(location.search).get("token") || "";
  const byKey = {};
  for (const [label, key] of Object.entries(W.keys)) byKey[key] = label;
  const els = [];          // figure elements in page order
  const cells = new Map(); // id -> cell
  let sel = -1, signed = null;
  const $ = (id) => document.getElementById(id);
  const reviewer = $("reviewer");
  reviewer.value = localStorage.getItem("wbcedge-reviewer") || "";
  reviewer.addEventListener("change", () => localStorage.setItem("wbcedge-reviewer", reviewer.value.trim()));

  function status(text, err) { const s = $("status"); s.textContent = text; s.className = err ? "err" : ""; }

  async function api(path, body) {
    const opts = body === undefined ? {} : {method: "POST", body: JSON.stringify(body),
      headers: {"Content-Type": "application/json", "X-Wbcedge-Token": token}};
    const res = await fetch(path, opts);
    const data = await res.json();
    if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    return data;
  }

  const pct = (v) => v === null || v === undefined ? "—" : v.toFixed(1);
  function showSummary(s) {
    const d = s.differential, m = s.model_differential, tb = $("differential").tBodies[0];
    const rows = d.classes.map((c) => {
      const t = d.types[c], mt = m.types[c];
      const ci = t.ci_low === null ? "—" : `${t.ci_low.toFixed(1)}–${t.ci_high.toFixed(1)}`;
      const ref = t.reference_low === null ? "" : `${t.reference_low}–${t.reference_high}`;
      return `<tr data-type="${c}"><td>${c}</td><td class="count">${t.count}</td><td>${pct(t.percent)}</td><td>${ci}</td>` +
        `<td>${ref}</td><td class="${t.flag}">${t.flag.toUpperCase()}</td>` +
        `<td class="muted">${mt.count}</td><td class="muted">${pct(mt.percent)}</td></tr>`;
    });
    rows.push(`<tr><th>classified</th><th>${d.classified}</th><th></th><th></th><th></th><th></th>` +
      `<th class="muted">${m.classified}</th><th></th></tr>`);
    rows.push(`<tr data-type="unidentified"><td>unidentified (not in %)</td><td class="count">${d.unidentified}</td>` +
      `<td></td><td></td><td></td><td></td><td class="muted">${m.unidentified}</td><td></td></tr>`);
    rows.push(`<tr data-type="artefact"><td>artefact (not a white cell)</td><td class="count">${s.artefacts}</td>` +
      `<td></td><td></td><td></td><td></td><td class="muted">0</td><td></td></tr>`);
    tb.innerHTML = rows.join("");
    if (W.differentialMs === undefined) W.differentialMs = performance.now();
    const k = s.agreement.cohen_kappa;
    $("caption").textContent = `Percent of ${d.classified} classified cells, Clopper-Pearson interval; ` +
      `model and reviewed labels agree on ${s.agreement.agreed} of ${s.agreement.cells} cells, ` +
      `Cohen's kappa ${k === null ? "—" : k.toFixed(3)} (unreviewed cells count as agreed).`;
    $("progress").textContent = `reviewed ${s.reviewed_cells} of ${s.total_cells}`;
    signed = s.signoff;
    if (signed) {
      $("signed").hidden = false;
      $("signed").textContent = `Signed off by ${signed.reviewer} at ${signed.time_text}: labels are frozen. ` +
        "report.html and differential.json/.csv now hold the reviewed differential.";
      $("signoff").disabled = true;
    }
  }

  function paint(fig, c) {
    fig.classList.toggle("done", c.reviewed && c.label === c.model_label);
    fig.classList.toggle("changed", c.label !== c.model_label);
    fig.querySelector(".tag").textContent = c.label;
    fig.title = `model: ${c.model_label} ${c.confidence.toFixed(2)}` + (c.reviewed ? `; reviewed by ${c.reviewer}` : "");
  }

  function figureHtml(c) {
    const cls = "cell" + (c.reviewed && c.label === c.model_label ? " done" : "") + (c.label !== c.model_label ? " changed" : "");
    return `<figure class="${cls}" data-id="${c.id}"><img loading="lazy" alt="cell ${c.id}" src="crops/${c.id}.jpg">` +
      `<figcaption>${c.confidence.toFixed(2)} <span class="tag">${c.label}</span></figcaption></figure>`;
  }

  function addCells(list) {
    // One insertAdjacentHTML per group and page: thousands of cells render without blocking the keyboard.
    const main = $("cells"), runs = [];
    for (const c of list) {
      cells.set(c.id, c);
      if (!runs.length || runs[runs.length - 1].label !== c.model_label) runs.push({label: c.model_label, items: []});
      runs[runs.length - 1].items.push(c);
    }
    for (const run of runs) {
      let group = document.getElementById("g-" + run.label);
      if (!group) {
        const h = document.createElement("h2");
        h.textContent = `${run.label} (model)`;
        group = document.createElement("div");
        group.className = "gallery"; group.id = "g-" + run.label;
        main.append(h, group);
      }
      const before = group.children.length;
      group.insertAdjacentHTML("beforeend", run.items.map(figureHtml).join(""));
      for (let i = before; i < group.children.length; i++) {
        const fig = group.children[i];
        fig.dataset.index = els.length; els.push(fig);
      }
    }
  }

  $("cells").addEventListener("click", (ev) => {
    const fig = ev.target.closest("figure.cell");
    if (fig) { select(+fig.dataset.index); zoom(true); }
  });

  function select(i) {
    if (!els.length) return;
    i = Math.max(0, Math.min(els.length - 1, i));
    if (sel >= 0 && els[sel]) els[sel].classList.remove("sel");
    sel = i; els[i].classList.add("sel");
    els[i].scrollIntoView({block: "nearest"});
    if (!$("zoom").hidden) zoom(true);
  }

  function zoom(open) {
    const z = $("zoom");
    if (!open || sel < 0) { z.hidden = true; return; }
    const c = cells.get(+els[sel].dataset.id), img = $("zoom-img");
    img.onerror = () => { img.onerror = null; img.src = `crops/${c.id}.jpg`; $("zoom-caption").textContent += " (frame not available: crop shown)"; };
    img.src = `frames/${c.id}.jpg`;
    $("zoom-caption").textContent = `cell ${c.id} · ${c.frame_name} · model ${c.model_label} ${c.confidence.toFixed(2)} · now ${c.label}`;
    z.hidden = false;
  }

  function rowStep(dir) {
    if (sel < 0) return 1;
    const top = els[sel].offsetTop;
    let j = sel;
    while (els[j + dir] && els[j + dir].offsetTop === top) j += dir;
    if (!els[j + dir]) return j - sel || dir;
    const left = els[sel].offsetLeft;
    let k = j + dir;
    while (els[k + dir] && els[k + dir].offsetTop === els[j + dir].offsetTop &&
           (dir > 0 ? els[k].offsetLeft < left : els[k].offsetLeft > left)) k += dir;
    return k - sel;
  }

  async function label(name) {
    if (sel < 0) return;
    const who = reviewer.value.trim();
    if (!who) { status("enter your name as reviewer first", true); reviewer.focus(); return; }
    localStorage.setItem("wbcedge-reviewer", who);
    const fig = els[sel], id = +fig.dataset.id;
    const chosen = name === null ? cells.get(id).model_label : name;
    try {
      const r = await api(`api/cells/${id}/label`, {label: chosen, reviewer: who});
      cells.set(id, r.cell); paint(fig, r.cell); showSummary(r.summary);
      status(`cell ${id}: ${r.cell.label}`);
      if (+fig.dataset.index === sel) select(sel + 1);
    } catch (e) { status(e.message, true); }
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target === reviewer || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (k in byKey) { label(byKey[k]); }
    else if (k === "enter" || k === "a") { label(null); }
    else if (k === "arrowright") { select(sel + 1); }
    else if (k === "arrowleft") { select(sel - 1); }
    else if (k === "arrowdown") { select(sel + rowStep(1)); }
    else if (k === "arrowup") { select(sel + rowStep(-1)); }
    else if (k === " ") { zoom($("zoom").hidden); }
    else if (k === "escape") { zoom(false); }
    else return;
    ev.preventDefault();
  });
  $("zoom").addEventListener("click", () => zoom(false));

  $("signoff").addEventListener("click", async () => {
    const who = reviewer.value.trim();
    if (!who) { status("enter your name as reviewer first", true); reviewer.focus(); return; }
    try {
      showSummary(await api("api/signoff", {reviewer: who, accept_remaining: $("accept-rest").checked}));
      status("signed off");
    } catch (e) { status(e.message, true); }
  });

  async function load() {
    // A small first page so the first cells show at once; the rest follows in pages, yielding between them.
    let offset = 0, total = 1, limit = 100;
    while (offset < total) {
      const page = await api(`api/cells?offset=${offset}&limit=${limit}`);
      total = page.total; addCells(page.cells); offset += page.cells.length; limit = 500;
      await new Promise((r) => setTimeout(r, 0));
      if (sel < 0 && els.length) { select(0); W.firstCellsMs = performance.now(); }
      if (!page.cells.length) break;
    }
    W.allCellsMs = performance.now();
    $("loading").hidden = true;
    document.body.dataset.loaded = "1";
  }

  if (W.live) {
    setInterval(async () => {
      $("live-frame").src = `live/frame.jpg?t=${Date.now()}`;
      try {
        const s = await api("api/live");
        $("live-state").textContent = `${s.frames} frames · ${s.cells} cells · focus ${s.focus_text}` +
          (s.running ? "" : " · counting ended");
        showSummary(await api("api/differential"));
        if (s.cells > els.length) { const p = await api(`api/cells?offset=0&limit=2000`); $("cells").innerHTML = ""; els.length = 0; cells.clear(); sel = -1; addCells(p.cells); select(0); }
      } catch (e) { status(e.message, true); }
    }, 1000);
  }

  api("api/differential").then(showSummary).catch((e) => status(e.message, true));
  load().catch((e) => status(e.message, true));
})();
