/* The credit-gate dashboard: reads the operators' API (/v1) with the token the operator typed in.
 *
 * The token is kept in this tab's sessionStorage and sent as "Authorization: Bearer" on each call;
 * a 401 forgets it. Everything shown is written with textContent, never parsed as markup. Days and
 * times are UTC throughout: the API's days are UTC days, and no local time zone is applied.
 */
"use strict";

(function () {
  const TOKEN_KEY = "credit-gate.token";
  const DAY_MS = 86400000;
  const PALETTE = ["#2456c9", "#e07b00", "#1b8a5a", "#b3261e", "#7a4bc2", "#008b9a", "#a8741a", "#5b6474"];
  const MAX_ACCOUNT_PAGES = 50;

  const state = {
    token: null,
    accounts: [],
    chosen: null,
    range: { since: "", until: "" },
    ledger: { pages: [null], next: null },
    charts: {},
    generation: 0,
  };

  const $ = (id) => document.getElementById(id);

  // --- API --------------------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path, params) {
    const url = new URL("../v1/" + path, window.location.href);
    for (const [name, value] of Object.entries(params || {})) {
      if (value === null || value === undefined || value === "") continue;
      for (const one of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(one));
    }
    const response = await fetch(url, {
      headers: { Authorization: "Bearer " + state.token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (response.status === 401) throw new Unauthorized("the token was refused");
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      throw new Error(`${path}: ${response.status} ${detail}`);
    }
    return body;
  }

  const seg = (name) => encodeURIComponent(name);

  // --- Small helpers ----------------------------------------------------------------------------

  const number = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US"));

  function utcTime(text) {
    if (!text) return "—";
    return text.replace("T", " ").replace(/(\.\d+)?Z$/, "");
  }

  function isoDay(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function dayMs(day) {
    const [y, m, d] = day.split("-").map(Number);
    return Date.UTC(y, m - 1, d);
  }

  function daysBetween(since, until) {
    const out = [];
    for (let t = dayMs(since); t <= dayMs(until); t += DAY_MS) out.push(isoDay(t));
    return out;
  }

  const nextDay = (day) => isoDay(dayMs(day) + DAY_MS);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
      tr.appendChild(el("td", text, cls));
    }
    return tr;
  }

  function note(text, columns) {
    const tr = document.createElement("tr");
    const td = el("td", text, "wrap empty-row");
    td.colSpan = columns;
    tr.appendChild(td);
    return tr;
  }

  function fillTable(id, rows) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren(...rows);
  }

  function cards(id, items) {
    const list = $(id);
    list.replaceChildren(
      ...items.map(([label, value, key]) => {
        const box = document.createElement("div");
        if (key) box.dataset.card = key;
        box.append(el("dt", label), el("dd", value));
        return box;
      }),
    );
  }

  function busy(name, on) {
    const node = document.querySelector(`[data-loading="${name}"]`);
    if (node) node.hidden = !on;
    const section = $(name);
    if (section) section.setAttribute("aria-busy", on ? "true" : "false");
  }

  function show(id, on) {
    $(id).hidden = !on;
  }

  function problem(error) {
    if (error instanceof Unauthorized) {
      signOut("The token was refused: sign in again.");
      return;
    }
    const banner = $("problem");
    banner.textContent = "Could not load: " + error.message;
    banner.hidden = false;
  }

  // --- Charts -----------------------------------------------------------------------------------

  function barChart(id, labels, datasets, legend) {
    const old = state.charts[id];
    if (old) old.destroy();
    const stacked = datasets.length > 1;
    const total = datasets.reduce((sum, d) => sum + d.data.reduce((a, b) => a + b, 0), 0);
    const none = $(id).closest("figure").querySelector(".none");
    if (none) none.hidden = total !== 0;
    state.charts[id] = new Chart($(id), {
      type: "bar",
      data: { labels, datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: legend === undefined ? stacked : legend, position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { title: (items) => (items.length ? items[0].label + " (UTC)" : "") } },
        },
        scales: {
          x: { stacked, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 }, title: { display: true, text: "Day (UTC)" } },
          y: { stacked, beginAtZero: true, ticks: { precision: 0 } },
        },
      },
    });
  }

  function series(label, data, index) {
    const color = PALETTE[index % PALETTE.length];
    return { label, data, backgroundColor: color, borderColor: color, borderWidth: 0 };
  }

  // Refusals by reason, one stacked series per reason (most refused first) over the totals' days.
  function reasonsChart(id, totals) {
    const datasets = totals.reasons.map((reason, index) =>
      series(reason, totals.days.map((d) => d.refused_by_reason[reason] || 0), index + 3));
    const labels = totals.days.map((d) => d.day);
    barChart(id, labels, datasets.length ? datasets : [series("Refused", labels.map(() => 0), 3)], datasets.length > 0);
  }

  // --- Range ------------------------------------------------------------------------------------

  function setRange(days) {
    const today = isoDay(Date.now());
    state.range = { since: isoDay(dayMs(today) - (days - 1) * DAY_MS), until: today };
    $("range-since").value = state.range.since;
    $("range-until").value = state.range.until;
  }

  function readRange() {
    const since = $("range-since").value;
    const until = $("range-until").value;
    if (!since || !until || since > until) {
      problem(new Error("the range needs a first day on or before its last day"));
      return false;
    }
    state.range = { since, until };
    return true;
  }

  // --- Sections ---------------------------------------------------------------------------------

  async function loadOverview() {
    busy("overview", true);
    show("overview-body", false);
    const { since, until } = state.range;
    const totals = await api("usage/totals", { since, until: nextDay(until), top: 10 });
    $("overview-range").textContent = `${since} to ${until} (UTC)`;
    const t = totals.total;
    cards("totals-cards", [
      ["Credits charged", number(t.credits), "credits"],
      ["Requests", number(t.requests), "requests"],
      ["Refused", number(t.refused), "refused"],
      ["Credits refunded", number(t.refunded), "refunded"],
      ["Accounts with use", number(totals.accounts_with_usage), "accounts"],
    ]);
    const labels = totals.days.map((d) => d.day);
    show("overview-empty", t.requests === 0 && t.refused === 0 && t.credits === 0);
    show("overview-body", true);
    barChart("chart-api-credits", labels, [series("Credits charged", totals.days.map((d) => d.credits), 0)]);
    barChart("chart-api-refused", labels, [series("Refused", totals.days.map((d) => d.refused), 3)]);
    reasonsChart("chart-api-reasons", totals);
    fillTable(
      "top-accounts",
      totals.top_accounts.length
        ? totals.top_accounts.map((a) => {
            const tr = row([a.account, [number(a.credits), "num"], [number(a.requests), "num"], [number(a.refused), "num"], [number(a.refunded), "num"]]);
            tr.className = "pick";
            tr.addEventListener("click", () => choose(a.account, true));
            return tr;
          })
        : [note("No account used the API in this range.", 5)],
    );
    const routes = [...totals.routes].sort((a, b) => b.refused - a.refused || b.requests - a.requests);
    fillTable(
      "route-totals",
      routes.length
        ? routes.map((r) => row([r.route, [number(r.refused), "num"], [number(r.requests), "num"], [number(r.credits), "num"], [number(r.refunded), "num"]]))
        : [note("No route was used in this range.", 5)],
    );
    busy("overview", false);
  }

  async function loadAccounts() {
    busy("accounts", true);
    const accounts = [];
    let after = null;
    for (let page = 0; page < MAX_ACCOUNT_PAGES; page++) {
      const answer = await api("accounts", { limit: 1000, after });
      accounts.push(...answer.accounts);
      after = answer.next;
      if (!after) break;
    }
    state.accounts = accounts;
    $("accounts-count").textContent = accounts.length ? `(${number(accounts.length)}${after ? "+" : ""})` : "";
    fillTable(
      "accounts-table",
      accounts.map((a) => {
        const sub = a.subscription;
        const period = a.period;
        const tr = row([
          a.account,
          sub ? sub.plan : "—",
          [sub ? sub.status : "no subscription", sub ? "status-" + sub.status : ""],
          [number(a.balance), "num"],
          [period ? number(period.remaining) : "—", "num"],
          [period ? number(period.allowance) + (period.length !== "none" ? " / " + period.length : "") : "—", "num"],
          period && period.end ? utcTime(period.end) : "—",
        ]);
        tr.className = "pick";
        tr.dataset.account = a.account;
        tr.addEventListener("click", () => choose(a.account, true));
        return tr;
      }),
    );
    show("accounts-table", accounts.length > 0);
    show("accounts-empty", accounts.length === 0);
    $("account-select").parentElement.hidden = accounts.length === 0;
    const select = $("account-select");
    select.replaceChildren(...accounts.map((a) => {
      const option = el("option", a.account);
      option.value = a.account;
      return option;
    }));
    busy("accounts", false);
  }

  function chosenAccount() {
    return state.accounts.find((a) => a.account === state.chosen) || null;
  }

  async function loadAccount() {
    const account = chosenAccount();
    show("account-none", !account);
    show("account-body", false);
    if (!account) return;
    busy("account", true);
    $("account-select").value = account.account;
    for (const tr of $("accounts-table").querySelectorAll("tbody tr")) {
      tr.classList.toggle("chosen", tr.dataset.account === account.account);
    }
    const { since, until } = state.range;
    const range = { since, until: nextDay(until), account: account.account };
    const [answer, totals] = await Promise.all([api("usage", range), api("usage/totals", { ...range, top: 1 })]);
    const rows = answer.rows.filter((r) => !r.member);
    const days = daysBetween(since, until);
    const routes = [...new Set(rows.map((r) => r.route))].sort();
    const sum = (field) => rows.reduce((total, r) => total + r[field], 0);
    const sub = account.subscription;
    cards("account-cards", [
      ["Balance", number(account.balance), "balance"],
      ["Plan", sub ? `${sub.plan} (${sub.status})` : "no subscription", "plan"],
      ["Allowance left", account.period ? `${number(account.period.remaining)} of ${number(account.period.allowance)}` : "—", "allowance"],
      ["Requests", number(sum("requests")), "requests"],
      ["Credits charged", number(sum("credits")), "credits"],
      ["Refused", number(sum("refused")), "refused"],
      ["Credits refunded", number(sum("refunded")), "refunded"],
    ]);
    show("account-empty", rows.length === 0);
    show("account-body", true);
    for (const field of ["requests", "credits", "refused", "refunded"]) {
      const datasets = routes.map((route, index) => {
        const byDay = new Map(rows.filter((r) => r.route === route).map((r) => [r.day, r[field]]));
        return series(route, days.map((d) => byDay.get(d) || 0), index);
      });
      barChart("chart-account-" + field, days, datasets.length ? datasets : [series(field, days.map(() => 0), 0)]);
    }
    reasonsChart("chart-account-reasons", totals);
    busy("account", false);
  }

  async function loadLedger() {
    const account = chosenAccount();
    $("ledger-account").textContent = account ? `of ${account.account}` : "";
    show("ledger-table", false);
    show("ledger-empty", false);
    if (!account) {
      $("ledger-empty").textContent = "Choose an account to read its ledger.";
      show("ledger-empty", true);
      return;
    }
    busy("ledger", true);
    const since = $("ledger-since").value;
    const until = $("ledger-until").value;
    const pages = state.ledger.pages;
    const answer = await api(`accounts/${seg(account.account)}/ledger`, {
      since,
      until: until ? nextDay(until) : "",
      order: $("ledger-order").value,
      limit: $("ledger-limit").value,
      cursor: pages[pages.length - 1],
    });
    state.ledger.next = answer.next;
    fillTable(
      "ledger-table",
      answer.entries.map((e) =>
        row([
          utcTime(e.time),
          e.kind,
          [e.cost === undefined ? "" : number(e.cost), "num"],
          [number(e.amount), "num"],
          [number(e.balance), "num"],
          e.route || "",
          [e.note || e.idempotency_key || e.key || "", "wrap"],
          e.ledger_id,
        ]),
      ),
    );
    $("ledger-empty").textContent = "No ledger entries for this account and filter.";
    show("ledger-table", answer.entries.length > 0);
    show("ledger-empty", answer.entries.length === 0);
    $("ledger-page").textContent = `Page ${pages.length}`;
    $("ledger-first").disabled = pages.length === 1;
    $("ledger-next").disabled = !answer.next;
    busy("ledger", false);
  }

  async function loadPlans() {
    busy("plans", true);
    const plans = await api("plans");
    const subscribers = await Promise.all(plans.map((p) => api(`plans/${seg(p.name)}/subscribers`)));
    fillTable(
      "plans-table",
      plans.map((p, index) => {
        const accounts = subscribers[index].accounts;
        const shown = accounts.slice(0, 12).join(", ") + (accounts.length > 12 ? `, and ${accounts.length - 12} more` : "");
        const tr = row([
          p.title ? `${p.name} (${p.title})` : p.name,
          p.period,
          [number(p.allowance), "num"],
          p.prepaid ? "yes" : "no",
          [number(accounts.length), "num"],
          [accounts.length ? shown : "none", "wrap"],
        ]);
        tr.dataset.plan = p.name;
        return tr;
      }),
    );
    show("plans-table", plans.length > 0);
    show("plans-empty", plans.length === 0);
    busy("plans", false);
  }

  // --- Flow -------------------------------------------------------------------------------------

  async function guarded(work) {
    const generation = state.generation;
    $("problem").hidden = true;
    try {
      await work();
    } catch (error) {
      if (generation === state.generation) problem(error);
    }
  }

  function choose(name, scroll) {
    state.chosen = name;
    state.ledger = { pages: [null], next: null };
    guarded(async () => {
      await Promise.all([loadAccount(), loadLedger()]);
    });
    if (scroll) $("account").scrollIntoView({ block: "start" });
  }

  async function loadAll() {
    await guarded(async () => {
      await loadAccounts();
      if (!state.chosen || !chosenAccount()) state.chosen = state.accounts.length ? state.accounts[0].account : null;
      await Promise.all([loadOverview(), loadPlans(), loadAccount(), loadLedger()]);
    });
    document.body.dataset.ready = "true";
  }

  async function signIn(token) {
    state.token = token;
    state.generation += 1;
    try {
      await api("accounts", { limit: 1 });
    } catch (error) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      const message = error instanceof Unauthorized ? "The token was refused." : "Could not reach the API: " + error.message;
      $("sign-in-error").textContent = message;
      show("sign-in-error", true);
      show("sign-in", true);
      document.body.dataset.ready = error instanceof Unauthorized ? "refused" : "unreachable";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    show("sign-in-error", false);
    show("sign-in", false);
    show("dashboard", true);
    show("sign-out", true);
    await loadAll();
  }

  function signOut(message) {
    state.generation += 1;
    state.token = null;
    state.accounts = [];
    sessionStorage.removeItem(TOKEN_KEY);
    for (const chart of Object.values(state.charts)) chart.destroy();
    state.charts = {};
    show("dashboard", false);
    show("sign-out", false);
    show("sign-in", true);
    $("token").value = "";
    $("sign-in-error").textContent = message || "";
    show("sign-in-error", Boolean(message));
    document.body.dataset.ready = message ? "refused" : "signed-out";
  }

  function start() {
    Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
    Chart.defaults.color = "#5b6474";
    setRange(30);
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("token").value.trim());
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("range").addEventListener("submit", (event) => {
      event.preventDefault();
      if (readRange()) guarded(async () => Promise.all([loadOverview(), loadAccount()]));
    });
    for (const button of document.querySelectorAll("[data-days]")) {
      button.addEventListener("click", () => {
        setRange(Number(button.dataset.days));
        guarded(async () => Promise.all([loadOverview(), loadAccount()]));
      });
    }
    $("account-select").addEventListener("change", (event) => choose(event.target.value, false));
    $("ledger-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      state.ledger = { pages: [null], next: null };
      guarded(loadLedger);
    });
    $("ledger-next").addEventListener("click", () => {
      if (!state.ledger.next) return;
      state.ledger.pages.push(state.ledger.next);
      guarded(loadLedger);
    });
    $("ledger-first").addEventListener("click", () => {
      state.ledger.pages = [null];
      guarded(loadLedger);
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else document.body.dataset.ready = "signed-out";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
