// CoordTok dashboard: renders the inline JSON (#dashboard-data) into tables and SVG charts.
// No libraries and no network. Every chart container gets data-rendered="1" and data-marks=N
// once it has drawn N > 0 marks (the browser test checks this).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("dashboard-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fdf", "#e4572e", "#17a398", "#f3a712", "#8f5bd7", "#d7263d", "#3c9d3a", "#6c757d", "#ff7f50", "#1b998b"];
  const BASELINE_COLOR = ["#101828", "#98a2b3", "#667085"];  // baselines: greys, drawn dashed
  const STAGE_COLOR = {};
  DATA.stages.forEach((s, i) => { STAGE_COLOR[s] = PALETTE[i % PALETTE.length]; });

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined || v === "") return "";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    if (Number.isInteger(v)) return String(v);
    return String(+v.toFixed(a >= 100 ? 1 : a >= 1 ? 3 : 4));
  }
  function note(text) { return el("p", { class: "note", text: text }); }

  // ------------------------------------------------------------------ charts

  function niceTicks(lo, hi, n) {
    if (lo === hi) { lo -= 1; hi += 1; }
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= step0);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return ticks;
  }
  function logTicks(lo, hi) {
    const ticks = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of [1, 2, 5]) { const t = m * Math.pow(10, e); if (t >= lo && t <= hi) ticks.push(t); }
    }
    return ticks.length >= 2 ? ticks : [lo, hi];
  }
  function scale(lo, hi, a, b, log) {
    if (log) { lo = Math.log10(lo); hi = Math.log10(hi); }
    if (hi === lo) { lo -= 1; hi += 1; }
    return v => a + ((log ? Math.log10(v) : v) - lo) / (hi - lo) * (b - a);
  }
  function extent(values, log) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (log) { lo /= 1.4; hi *= 1.4; } else { const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.1 || 1; lo -= pad; hi += pad; }
    return [lo, hi];
  }

  // spec: {title, xlabel, ylabel, xlog, ylog, kind: "scatter"|"line"|"bar",
  //        series: [{name, color, points: [[x, y, label]], line, marker: "circle"|"diamond", labels}]}
  function chart(spec) {
    const box = el("div", { class: "chart", "data-chart": spec.title });
    box.appendChild(el("div", { class: "title", text: spec.title }));
    const W = 460, H = 280, L = 58, R = 14, T = 10, B = 40;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title });
    let marks = 0;
    // bar series share one category axis, so they keep their empty (NaN) slots
    const usable = p => Number.isFinite(p[1]) && (spec.kind === "bar" || Number.isFinite(p[0])) &&
      (!spec.xlog || p[0] > 0) && (!spec.ylog || p[1] > 0);
    const series = spec.series.map(s => ({ ...s, points: spec.kind === "bar" ? s.points : s.points.filter(usable) }))
      .filter(s => s.points.some(usable));
    if (!series.length) { box.appendChild(note("no data")); return box; }
    const ys = series.flatMap(s => s.points.filter(usable).map(p => p[1]));
    let [y0, y1] = extent(ys, spec.ylog);
    if (spec.kind === "bar" && !spec.ylog) { y0 = Math.min(0, y0); }
    const sy = scale(y0, y1, H - B, T, spec.ylog);
    let sx, xticks, band = 0, cats = [];
    if (spec.kind === "bar") {
      cats = series[0].points.map(p => String(p[0]));
      band = (W - L - R) / cats.length;
      sx = i => L + band * (i + 0.5);
    } else {
      const [x0, x1] = extent(series.flatMap(s => s.points.map(p => p[0])), spec.xlog);
      sx = scale(x0, x1, L, W - R, spec.xlog);
      xticks = spec.xlog ? logTicks(x0, x1) : niceTicks(x0, x1, 6);
    }
    const yticks = spec.ylog ? logTicks(y0, y1) : niceTicks(y0, y1, 5);
    const axis = svg("g", { class: "axis" });
    for (const t of yticks) {
      const y = sy(t);
      if (y < T - 0.5 || y > H - B + 0.5) continue;
      axis.appendChild(svg("line", { class: "gridline", x1: L, x2: W - R, y1: y, y2: y }));
      axis.appendChild(svg("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, fmt(t)));
    }
    if (xticks) for (const t of xticks) {
      const x = sx(t);
      if (x < L - 0.5 || x > W - R + 0.5) continue;
      axis.appendChild(svg("line", { x1: x, x2: x, y1: H - B, y2: H - B + 4 }));
      axis.appendChild(svg("text", { x: x, y: H - B + 14, "text-anchor": "middle" }, fmt(t)));
    }
    axis.appendChild(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
    axis.appendChild(svg("line", { x1: L, x2: L, y1: T, y2: H - B }));
    axis.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, spec.xlabel || ""));
    axis.appendChild(svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                                   transform: `rotate(-90 12 ${(T + H - B) / 2})` }, spec.ylabel || ""));
    root.appendChild(axis);
    const legend = el("div", { class: "legend" });
    series.forEach((s, si) => {
      const color = s.color || PALETTE[si % PALETTE.length];
      const g = svg("g", { "data-series": s.name });
      if (spec.kind === "bar") {
        const bw = band * 0.8 / series.length;
        s.points.forEach((p, i) => {
          if (!usable(p)) return;
          const x = L + band * i + band * 0.1 + bw * si, yb = sy(Math.max(y0, spec.ylog ? y0 : 0)), yv = sy(p[1]);
          const r = svg("rect", { x: x, y: Math.min(yb, yv), width: Math.max(1, bw - 1), height: Math.max(1, Math.abs(yb - yv)), fill: color });
          r.appendChild(svg("title", {}, `${p[0]}: ${fmt(p[1])}`));
          g.appendChild(r); marks++;
        });
      } else {
        const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
        if (s.line || spec.kind === "line") {
          const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
          g.appendChild(svg("path", { d: d, fill: "none", stroke: color, "stroke-width": 1.6,
                                      ...(s.dash ? { "stroke-dasharray": "6 4" } : {}) }));
          marks++;
        }
        if (spec.kind === "scatter" || pts.length === 1) {
          for (const p of pts) {
            const x = sx(p[0]), y = sy(p[1]);
            const m = s.marker === "diamond"
              ? svg("path", { d: `M${x},${y - 6}L${x + 6},${y}L${x},${y + 6}L${x - 6},${y}Z`, fill: "#fff", stroke: color, "stroke-width": 2, "data-marker": "1" })
              : svg("circle", { cx: x, cy: y, r: s.radius || 4.5, fill: color, "fill-opacity": 0.85 });
            m.appendChild(svg("title", {}, `${p[2] ? p[2] + ": " : ""}${fmt(p[0])}, ${fmt(p[1])}`));
            g.appendChild(m); marks++;
            if (s.labels && p[2]) {  // placed by layoutLabels once the page is drawn (no two overlap)
              g.appendChild(svg("text", { class: "point-label", x: x + 7, y: y - 5, "data-ax": x, "data-ay": y }, p[2]));
            }
          }
        }
      }
      root.appendChild(g);
      legend.appendChild(el("span", { style: `--c:${color}`, text: s.name }));
    });
    if (spec.kind === "bar") cats.forEach((c, i) => {
      root.appendChild(svg("text", { x: sx(i), y: H - B + 14, "text-anchor": "middle" }, c.length > 15 ? c.slice(0, 14) + "…" : c));
    });
    box.appendChild(root);
    box.appendChild(legend);
    if (marks > 0) { box.dataset.rendered = "1"; box.dataset.marks = String(marks); }
    return box;
  }

  // Point labels: greedy placement once the SVG is in the page (text is measured). Each label tries
  // spots beside its point, right then left, above then below, moving further out until its box
  // hits no placed label, no marker and stays inside the chart; a label moved away from its point
  // gets a leader line. Paper rows with close token counts would otherwise print on top of each other.
  function layoutLabels(root) {
    const labels = [...root.querySelectorAll("text.point-label")];
    if (!labels.length) return;
    const [, , W, H] = root.getAttribute("viewBox").split(" ").map(Number);
    const hit = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const taken = [...root.querySelectorAll("circle, path[data-marker]")].map(m => {
      const b = m.getBBox(); return { x: b.x, y: b.y, w: b.width, h: b.height };
    });
    labels.sort((a, b) => (+a.dataset.ax - +b.dataset.ax) || (+a.dataset.ay - +b.dataset.ay));
    for (const t of labels) {
      const ax = +t.dataset.ax, ay = +t.dataset.ay;
      t.setAttribute("x", 0); t.setAttribute("y", 0); t.setAttribute("text-anchor", "start");
      const bb = t.getBBox(), w = bb.width + 2, h = bb.height;
      let best = null;
      for (let ring = 0; ring <= 12 && !(best && best.free); ring++) {
        for (const side of [1, -1]) for (const dir of [-1, 1]) {
          const x = side > 0 ? ax + 7 : ax - 7 - w;
          const y = ay + (dir < 0 ? -h - 2 : 2) + dir * ring * (h + 1);
          const box = { x: x, y: y, w: w, h: h };
          const inside = x >= 0 && y >= 0 && x + w <= W && y + h <= H;
          const clashes = taken.filter(o => hit(box, o)).length + (inside ? 0 : 100);
          if (!best || clashes < best.clashes) best = { ...box, clashes: clashes, ring: ring, free: clashes === 0 };
          if (best.free) break;
        }
      }
      t.setAttribute("x", best.x + 1);
      t.setAttribute("y", best.y - bb.y);
      taken.push(best);
      if (best.ring > 0) {
        const ex = best.x > ax ? best.x : best.x + best.w, ey = Math.min(Math.max(ay, best.y), best.y + best.h);
        t.parentNode.insertBefore(svg("line", { class: "leader", x1: ax, y1: ay, x2: ex, y2: ey }), t);
      }
    }
  }

  // ------------------------------------------------------------------ sections

  function section(id, title, children) {
    return el("section", { id: id }, [el("h2", { text: title }), ...children]);
  }
  function missing(stages, what) {
    return note(`no runs of stage ${stages.join(" / ")} ${what} yet`);
  }

  function runsSection() {
    const rows = DATA.runs;
    if (!rows.length) return section("runs", "Runs", [note(DATA.store_note || "no runs yet")]);
    const tagCols = ["standin", "dvc exp", "commit", "dirty", "params"];
    const cols = ["name", "stage", "start", "status", "duration (s)", ...DATA.key_metrics, ...tagCols];
    const stageSel = el("select", { id: "stage-filter" }, [el("option", { value: "", text: "all stages" }),
      ...DATA.stages_present.map(s => el("option", { value: s, text: s }))]);
    const text = el("input", { id: "text-filter", type: "search", placeholder: "filter: name, tag, status…" });
    const count = el("span", { class: "note" });
    const tbody = el("tbody");
    const trs = rows.map(r => {
      const cells = [
        el("td", { title: r.id, text: (r.parent ? "↳ " : "") + r.name }), el("td", { text: r.stage }), el("td", { text: r.start }),
        el("td", {}, [el("span", { class: "badge " + r.status, text: r.status })]),
        el("td", { class: "num", text: fmt(r.duration_s === null ? null : Math.round(r.duration_s * 10) / 10) }),
        ...DATA.key_metrics.map(k => el("td", { class: "num", text: fmt(r.metrics[k]) })),
        el("td", {}, r.tags.standin === "true" ? [el("span", { class: "badge standin", text: "stand-in" })] : [r.tags.standin || ""]),
        el("td", { text: r.tags["dvc exp"] }), el("td", { text: (r.tags.commit || "").slice(0, 8) }),
        el("td", { text: r.tags.dirty }), el("td", { text: r.tags.params }),
      ];
      const tr = el("tr", { class: r.parent ? "child" : "", "data-stage": r.stage }, cells);
      tr.dataset.search = [r.name, r.stage, r.status, r.id, ...Object.values(r.tags),
                           r.tags.standin === "true" ? "stand-in" : ""].join(" ").toLowerCase();
      tbody.appendChild(tr);
      return tr;
    });
    function apply() {
      const s = stageSel.value, q = text.value.trim().toLowerCase();
      let shown = 0;
      for (const tr of trs) {
        const ok = (!s || tr.dataset.stage === s) && (!q || q.split(/\s+/).every(w => tr.dataset.search.includes(w)));
        tr.style.display = ok ? "" : "none";
        shown += ok;
      }
      count.textContent = `${shown} of ${trs.length} runs`;
    }
    stageSel.addEventListener("change", apply);
    text.addEventListener("input", apply);
    const head = el("tr", {}, cols.map((c, i) => {
      const th = el("th", { text: c, title: "sort" });
      th.addEventListener("click", () => {
        const dir = th.dataset.dir === "asc" ? -1 : 1;
        th.dataset.dir = dir === 1 ? "asc" : "desc";
        const key = tr => tr.children[i].textContent;
        trs.sort((a, b) => {
          const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
          return dir * (Number.isFinite(nx) && Number.isFinite(ny) ? nx - ny : x.localeCompare(y));
        }).forEach(tr => tbody.appendChild(tr));
      });
      return th;
    }));
    apply();
    return section("runs", "Runs", [el("div", { class: "controls" }, [stageSel, text, count]),
      el("div", { class: "table-wrap" }, [el("table", { id: "runs-table" }, [el("thead", {}, [head]), tbody])])]);
  }

  function frontierSection() {
    const pts = DATA.frontier, paper = DATA.paper.reconstruction || [];
    const children = [];
    if (!pts.length) children.push(missing(["pretrain", "finetune", "evaluate"], "with PSNR / LPIPS / rFVD and a token count"));
    const grid = el("div", { class: "grid" });
    for (const [key, label] of [["psnr", "PSNR (dB, higher is better)"], ["lpips", "LPIPS (lower is better)"], ["rfvd", "rFVD (lower is better)"]]) {
      const byStage = {};
      for (const p of pts) if (p[key] !== null && p[key] !== undefined) (byStage[p.stage] = byStage[p.stage] || []).push([p.tokens, p[key], p.run + (p.standin === "true" ? " (stand-in)" : "")]);
      const series = Object.entries(byStage).map(([s, ps]) => ({ name: `this project: ${s}`, color: STAGE_COLOR[s], points: ps }));
      series.push({ name: "paper (128×128×128)", color: "#101828", marker: "diamond", labels: true,
                    points: paper.map(r => [r.tokens, r[key], r.method]) });
      grid.appendChild(chart({ title: `${key.toUpperCase()} vs tokens`, kind: "scatter", xlog: true, ylog: key === "rfvd",
                               xlabel: "tokens per video", ylabel: label, series: series }));
    }
    children.push(grid);
    children.push(note("Paper rows are at UCF-101 128 frames × 128²; this project's points are at its own data.img_size / num_frames, so compare trends, not absolute values."));
    return section("frontier", "Token count vs reconstruction quality", children);
  }

  function sweepSection() {
    const sw = DATA.sweep;
    if (!sw) return section("sweep", "Sweep", [note(DATA.sweep_note || "no runs of stage sweep yet")]);
    const children = [el("p", { text: `study "${sw.study}": ${sw.trials.length} completed trials; objectives: ` +
      sw.objectives.map((o, i) => `${o} (${sw.directions[i]})`).join(", ") })];
    const grid = el("div", { class: "grid" });
    const pareto = new Set(sw.pareto);
    if (sw.objectives.length >= 2) {
      const mk = t => [t.values[0], t.values[1], `trial ${t.number}`];
      const front = sw.trials.filter(t => pareto.has(t.number)).map(mk);
      grid.appendChild(chart({ title: "Pareto front", kind: "scatter", xlabel: sw.objectives[0], ylabel: sw.objectives[1], series: [
        { name: "trials", color: "#98a2b3", points: sw.trials.filter(t => !pareto.has(t.number)).map(mk) },
        { name: "Pareto-optimal", color: "#d7263d", points: front, line: true, labels: true, radius: 5.5 }] }));
    } else {
      grid.appendChild(chart({ title: `${sw.objectives[0]} per trial`, kind: "scatter", xlabel: "trial", ylabel: sw.objectives[0], series: [
        { name: "trials", color: "#98a2b3", points: sw.trials.filter(t => !pareto.has(t.number)).map(t => [t.number, t.values[0]]) },
        { name: "best", color: "#d7263d", points: sw.trials.filter(t => pareto.has(t.number)).map(t => [t.number, t.values[0], `trial ${t.number}`]), labels: true }] }));
    }
    for (const [obj, imp] of Object.entries(sw.importances)) {
      grid.appendChild(chart({ title: `parameter importance: ${obj}`, kind: "bar", xlabel: "parameter", ylabel: "importance",
                               series: [{ name: obj, color: "#2f6fdf", points: Object.entries(imp) }] }));
    }
    children.push(grid);
    if (sw.note) children.push(note(sw.note));
    const params = [...new Set(sw.trials.flatMap(t => Object.keys(t.params)))];
    const table = el("table", { id: "trials-table" }, [el("thead", {}, [el("tr", {}, ["trial", ...sw.objectives, ...params, "Pareto"].map(c => el("th", { text: c })))]),
      el("tbody", {}, sw.trials.map(t => el("tr", {}, [el("td", { text: String(t.number) }), ...t.values.map(v => el("td", { class: "num", text: fmt(v) })),
        ...params.map(p => el("td", { class: "num", text: fmt(t.params[p]) })), el("td", { text: pareto.has(t.number) ? "yes" : "" })])))]);
    children.push(el("h3", { text: "Trials" }), el("div", { class: "table-wrap" }, [table]));
    return section("sweep", "Sweep: Pareto front and parameter importances", children);
  }

  function curvesSection() {
    const children = [];
    for (const stage of DATA.stages) {
      const charts = DATA.curves[stage];
      if (!charts) {
        children.push(DATA.stages_present.includes(stage)
          ? note(`stage ${stage}: no metric logged at more than one step`)
          : note(`no runs of stage ${stage} yet`));
        continue;
      }
      const grid = el("div", { class: "grid" });
      for (const [metric, runs] of Object.entries(charts)) {
        const series = runs.map((r, i) => ({ name: r.run, color: PALETTE[i % PALETTE.length], points: r.points }));
        if (metric === "test_psnr") {  // naive baselines of the same test clips: flat dashed lines across the steps
          const steps = runs.flatMap(r => r.points.map(p => p[0]));
          const [lo, hi] = [Math.min(...steps), Math.max(...steps)];
          (DATA.curve_refs && DATA.curve_refs[stage] || []).forEach((ref, i) => series.push(
            { name: `${ref.name}: ${fmt(ref.value)} dB`, color: BASELINE_COLOR[i % BASELINE_COLOR.length], dash: true,
              points: [[lo, ref.value], [hi, ref.value]] }));
        }
        grid.appendChild(chart({ title: `${stage}: ${metric}`, kind: "line", xlabel: "step", ylabel: metric,
          ylog: /loss/.test(metric) && runs.every(r => r.points.every(p => p[1] > 0)), series: series }));
      }
      children.push(el("h3", { text: stage }), grid);
    }
    return section("curves", "Learning curves", children);
  }

  function generationSection() {
    const rows = DATA.generation, paper = DATA.paper.generation || [];
    const children = [];
    if (!rows.length) children.push(missing(["train_sit", "evaluate"], "with generation FVD / time / memory"));
    const grid = el("div", { class: "grid" });
    for (const [key, label] of [["fvd", "FVD"], ["seconds_per_video", "seconds per video"], ["memory_gb", "memory (GB)"]]) {
      const series = [];
      // FVD is stand-in only when its detector is (evaluate tags it); other figures follow the run's flag
      const flag = r => (key === "fvd" && r.detector_standin ? r.detector_standin : r.standin) === "true";
      const ours = rows.filter(r => r[key] !== null).map(r => [r.run + (flag(r) ? " (stand-in)" : ""), r[key]]);
      const theirs = paper.filter(r => r[key] !== null && r[key] !== undefined).map(r => [r.method, r[key]]);
      // one category axis: project runs then paper rows, each series fills its own categories
      const cats = [...ours, ...theirs];
      series.push({ name: "this project", color: "#2f6fdf", points: cats.map(c => [c[0], ours.includes(c) ? c[1] : NaN]) });
      series.push({ name: "paper", color: "#101828", points: cats.map(c => [c[0], theirs.includes(c) ? c[1] : NaN]) });
      grid.appendChild(chart({ title: label, kind: "bar", xlabel: "", ylabel: label, series: series }));
    }
    children.push(grid);
    const table = el("table", {}, [el("thead", {}, [el("tr", {}, ["run / method", "FVD", "s / video", "memory GB", "source"].map(c => el("th", { text: c })))]),
      el("tbody", {}, [...rows.map(r => el("tr", {}, [el("td", { text: r.run }), el("td", { class: "num", text: fmt(r.fvd) }),
        el("td", { class: "num", text: fmt(r.seconds_per_video) }), el("td", { class: "num", text: fmt(r.memory_gb) }),
        el("td", { text: r.weights ? "this project; " + r.weights : (r.standin === "true" ? "this project (stand-in weights)" : "this project") })])),
        ...paper.map(r => el("tr", {}, [el("td", { text: r.method }), el("td", { class: "num", text: fmt(r.fvd) }),
          el("td", { class: "num", text: fmt(r.seconds_per_video) }), el("td", { class: "num", text: fmt(r.memory_gb) }), el("td", { text: "paper" })]))])]);
    children.push(el("div", { class: "table-wrap" }, [table]));
    return section("generation", "Generation: FVD, time and memory", children);
  }

  function mediaSection() {
    if (!DATA.media.length) return section("media", "Samples", [note("no runs with sample videos or frame grids yet (pretrain / finetune / train_sit / evaluate log them)")]);
    const children = [];
    for (const g of DATA.media) {
      children.push(el("h3", { text: `${g.run} (${g.stage})` }));
      children.push(el("div", { class: "media" }, g.items.map(it => el("figure", {}, [
        it.kind === "video"
          ? el("video", { src: it.src, controls: "", muted: "", loop: "", autoplay: "", playsinline: "", preload: "auto" })
          : el("img", { src: it.src, alt: it.caption, loading: "eager" }),
        el("figcaption", { text: it.caption })]))));
    }
    return section("media", "Samples: videos and frame grids", children);
  }

  const app = document.getElementById("app");
  app.appendChild(el("header", {}, [el("h1", { text: `CoordTok dashboard: ${DATA.experiment}` }),
    el("div", { class: "meta", text: `store ${DATA.tracking_uri} · ${DATA.runs.length} runs · built ${DATA.generated}` })]));
  app.appendChild(el("nav", {}, [["runs", "Runs"], ["frontier", "Frontier"], ["sweep", "Sweep"], ["curves", "Learning curves"],
    ["generation", "Generation"], ["media", "Samples"]].map(([id, t]) => el("a", { href: "#" + id, text: t }))));
  const main = el("main");
  for (const build of [runsSection, frontierSection, sweepSection, curvesSection, generationSection, mediaSection]) {
    try { main.appendChild(build()); }
    catch (err) { main.appendChild(note(`section failed to render: ${err}`)); console.error(err); }
  }
  app.appendChild(main);
  for (const root of document.querySelectorAll(".chart svg")) {
    try { layoutLabels(root); } catch (err) { console.error(err); }
  }
  for (const v of document.querySelectorAll("video")) {
    v.muted = true;  // autoplay needs muted set as a property too
    v.addEventListener("loadeddata", () => { v.dataset.loaded = "1"; });
    v.addEventListener("error", () => { v.dataset.loaded = "error"; console.error("video failed to load: " + v.getAttribute("src")); });
  }
  for (const img of document.querySelectorAll("img")) {
    const mark = () => { img.dataset.loaded = img.naturalWidth > 0 ? "1" : "error"; };
    if (img.complete) mark(); else { img.addEventListener("load", mark); img.addEventListener("error", () => { mark(); console.error("image failed to load: " + img.getAttribute("src")); }); }
  }
  document.body.dataset.ready = "1";
})();
