// gateway dashboard: renders the snapshots the gateway streams (no polling, no upstream).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let data = JSON.parse($("initial").textContent);
  let skew = 0; // server clock minus ours, so countdowns match the server's view

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function duration(seconds) {
    const total = Math.max(0, Math.ceil(seconds));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  const now = () => Date.now() / 1000 + skew;

  function quotaItem(model) {
    const item = el("li", {});
    item.append(el("span", { class: "name" }, model.id));
    const pct = model.remaining === null ? null : Math.round(model.remaining * 100);
    item.append(el("span", {}, pct === null ? "quota unknown" : `${pct}% left`));
    if (pct !== null) {
      item.append(el("meter", { min: "0", max: "100", low: "15", high: "40", optimum: "100",
                                value: String(pct), "aria-label": `${model.id}: ${pct}% left` }));
    }
    const when = el("span", { class: "when" });
    if (model.cooldownUntil) {
      when.append(el("span", { class: "cool", "data-until": model.cooldownUntil },
                     `cooling down: ${duration(model.cooldownUntil - now())} left`));
    } else if (model.resetAt) {
      when.append(el("span", { "data-reset": model.resetAt },
                     `resets in ${duration(model.resetAt - now())}`));
    }
    if (when.childNodes.length) item.append(when);
    return item;
  }

  function renderAccounts() {
    const box = $("accounts");
    box.replaceChildren();
    if (!data.accounts.length) {
      box.append(el("p", {}, "No accounts yet: add one with `gateway accounts add`."));
      return;
    }
    for (const account of data.accounts) {
      const card = el("article", { class: "account", "aria-label": `account ${account.name}` });
      card.append(el("h3", {}, account.name));
      const meta = el("p", { class: "meta" }, `tier ${account.tier} · `);
      meta.append(el("span", { class: `status status-${account.status}` }, account.statusText));
      card.append(meta);
      const list = el("ul", { class: "quota", "aria-label": "quota per model" });
      for (const model of account.models) list.append(quotaItem(model));
      if (!account.models.length) list.append(el("li", {}, "no quota reported yet"));
      card.append(list);
      box.append(card);
    }
  }

  function plot(target, minutes, value, cls, label) {
    const peak = Math.max(0, ...minutes.map(value));
    const max = Math.max(1, peak);
    const w = 600, h = 80, bw = w / minutes.length;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const total = minutes.reduce((sum, m) => sum + value(m), 0);
    svg.setAttribute("aria-label", `${label}: ${total} in the last hour, at most ${peak} a minute`);
    const axis = document.createElementNS(ns, "line");
    axis.setAttribute("class", "axis");
    axis.setAttribute("x1", "0"); axis.setAttribute("x2", String(w));
    axis.setAttribute("y1", String(h - 0.5)); axis.setAttribute("y2", String(h - 0.5));
    svg.append(axis);
    minutes.forEach((m, i) => {
      const v = value(m);
      if (!v) return;
      const bar = document.createElementNS(ns, "rect");
      const bh = Math.max(2, (v / max) * (h - 4));
      bar.setAttribute("class", cls);
      bar.setAttribute("x", String(i * bw + 1));
      bar.setAttribute("width", String(Math.max(1, bw - 2)));
      bar.setAttribute("y", String(h - bh));
      bar.setAttribute("height", String(bh));
      const title = document.createElementNS(ns, "title");
      title.textContent = `${new Date(m.minute * 1000).toLocaleTimeString()}: ${v}`;
      bar.append(title);
      svg.append(bar);
    });
    const legend = el("p", { class: "legend" }, `${total} in the last hour · peak ${peak}/min`);
    $(target).replaceChildren(svg, legend);
  }

  function renderPlots() {
    plot("plot-requests", data.minutes, (m) => m.requests, "bar", "requests");
    plot("plot-errors", data.minutes,
         (m) => Object.values(m.errors).reduce((a, b) => a + b, 0), "err", "errors");
    const classes = {};
    for (const m of data.minutes) {
      for (const [k, v] of Object.entries(m.errors)) classes[k] = (classes[k] || 0) + v;
    }
    const words = Object.entries(classes).map(([k, v]) => `${k.replace("_", " ")}: ${v}`);
    $("plot-errors").append(el("p", { class: "legend" }, words.length ? words.join(" · ")
                                                                      : "no errors"));
  }

  function renderRequests() {
    const body = $("requests").tBodies[0];
    body.replaceChildren();
    if (!data.recent.length) {
      body.append(el("tr", {}, el("td", { colspan: "8" }, "No requests yet.")));
      return;
    }
    for (const r of data.recent) {
      const status = el("td", { class: r.status >= 400 ? "bad" : null },
                        r.status >= 400 ? `${r.status} (failed)` : String(r.status));
      body.append(el("tr", {},
        el("td", {}, new Date(r.at * 1000).toLocaleTimeString()),
        el("td", {}, r.face + (r.stream ? " (stream)" : "")),
        el("td", {}, r.asked || "-"),
        el("td", {}, r.served || "-"),
        el("td", {}, r.account || "-"),
        status,
        el("td", {}, `${Math.round(r.latencyMs)} ms`),
        el("td", {}, `${r.inputTokens}/${r.outputTokens}`)));
    }
  }

  function render() {
    skew = data.now - Date.now() / 1000;
    renderAccounts();
    renderPlots();
    renderRequests();
  }

  function tick() { // countdowns move between snapshots
    for (const node of document.querySelectorAll("[data-until]")) {
      node.textContent = `cooling down: ${duration(node.dataset.until - now())} left`;
    }
    for (const node of document.querySelectorAll("[data-reset]")) {
      node.textContent = `resets in ${duration(node.dataset.reset - now())}`;
    }
  }

  function connect() {
    const source = new EventSource("/dashboard/events");
    source.addEventListener("snapshot", (event) => {
      data = JSON.parse(event.data);
      $("live").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      render();
    });
    source.onerror = async () => {
      $("live").textContent = "reconnecting…";
      try { // signed out (a key removed, the gateway's secret changed)? then sign in again
        const answer = await fetch("/dashboard/session", { credentials: "same-origin" });
        if (answer.status === 401) { source.close(); location.reload(); }
      } catch (err) { /* the gateway is away: EventSource keeps retrying */ }
    };
  }

  $("refresh").addEventListener("click", async () => {
    const button = $("refresh");
    button.disabled = true;
    $("refresh-result").textContent = "Refreshing tokens…";
    try {
      const response = await fetch("/dashboard/refresh", {
        method: "POST", headers: { "x-csrf-token": csrf }, credentials: "same-origin" });
      const body = await response.json();
      $("refresh-result").textContent = response.ok
        ? `Refreshed ${body.refreshed} of ${body.accounts} accounts.`
        : `Refresh failed: ${(body.error && body.error.message) || response.status}`;
    } catch (err) {
      $("refresh-result").textContent = `Refresh failed: ${err}`;
    } finally {
      button.disabled = false;
    }
  });

  render();
  setInterval(tick, 1000);
  connect();
})();
