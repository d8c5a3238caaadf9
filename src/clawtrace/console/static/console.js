// What every console page shares: theme, keyboard, action buttons, JSON forms, toasts.
// Plain JavaScript, no build step. Buttons exist only for people whose role allows the action;
// the gateway checks the role again on every request.
"use strict";

const Console = (() => {
  const THEME_KEY = "clawtrace-theme";
  const THEMES = ["auto", "light", "dark"];

  // --- theme ---------------------------------------------------------------------------
  function currentTheme() {
    return localStorage.getItem(THEME_KEY) || "auto";
  }

  function applyTheme(theme) {
    if (theme === "auto") {
      delete document.documentElement.dataset.theme;
      localStorage.removeItem(THEME_KEY);
    } else {
      document.documentElement.dataset.theme = theme;
      localStorage.setItem(THEME_KEY, theme);
    }
    const button = document.getElementById("theme-toggle");
    if (button) button.title = `Theme: ${theme === "auto" ? "following the system" : theme} (t to change)`;
    document.dispatchEvent(new CustomEvent("clawtrace:theme"));
  }

  function cycleTheme() {
    const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
    applyTheme(next);
    toast(`Theme: ${next === "auto" ? "following the system" : next}`);
  }

  // --- toasts --------------------------------------------------------------------------
  // An error's title says what kind it is: refused (role), failed (anything else), no connection.
  function toast(message, isError = false, title = "Failed") {
    const box = document.getElementById("toasts");
    if (!box) return;
    const item = document.createElement("div");
    item.className = isError ? "toast error" : "toast";
    if (isError) {
      const heading = document.createElement("b");
      heading.textContent = `${title}: `;
      item.appendChild(heading);
    }
    item.appendChild(document.createTextNode(message));
    box.appendChild(item);
    setTimeout(() => item.remove(), isError ? 12000 : 5000);
  }

  // --- calling the console's API routes ------------------------------------------------
  async function callApi(url, method, body) {
    let response;
    try {
      response = await fetch(url, {
        method,
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch (err) {
      return { ok: false, status: 0, message: `The gateway did not answer (${err.message}); check that it runs, then try again.` };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : null;
      let message = error ? error.message : `${response.status} ${response.statusText}`;
      if (response.status === 401) message += " (log in again: reload the page)";
      return { ok: false, status: response.status, message, data };
    }
    return { ok: true, status: response.status, data };
  }

  function refresh(selector) {
    if (!selector || !window.htmx) return;
    document.querySelectorAll(selector).forEach((el) => window.htmx.trigger(el, "refresh"));
  }

  function errorTitle(result) {
    if (result.status === 401 || result.status === 403) return "Refused";
    return result.status === 0 ? "No connection" : "Failed";
  }

  function describe(data) {
    if (!data) return "done";
    if (data.detail) return data.detail;
    if (data.silence) return `silence ${data.silence.id} until ${new Date(data.silence.ends * 1000).toISOString().slice(0, 16).replace("T", " ")}Z; ${data.matching_alerts} alert(s) muted now`;
    if (data.alert) return `${data.alert.rule} acknowledged`;
    if (data.deployment) return `${data.deployment.ref} is the desired release of ${data.deployment.role} in ${data.deployment.env} now (${data.deployment.kind.replace("_", " ")})`;
    if (data.approval) return `approved for ${data.approval.env} by ${data.approval.approved_by}`;
    if (data.state) return `${data.state}`;
    return "done";
  }

  // <button data-action=URL [data-method] [data-body=JSON] [data-reason=#input] [data-confirm] [data-refresh=#el]>
  async function runAction(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    if (button.dataset.reason) {
      const input = document.querySelector(button.dataset.reason);
      if (input && input.value.trim()) body.reason = input.value.trim();
    }
    button.disabled = true;
    const result = await callApi(button.dataset.action, button.dataset.method || "POST", body);
    button.disabled = false;
    if (result.ok) {
      toast(`${button.textContent.trim()}: ${describe(result.data)}`);
      if (button.dataset.reason) {
        const input = document.querySelector(button.dataset.reason);
        if (input) input.value = "";
      }
    } else {
      toast(result.message, true, errorTitle(result));
    }
    refresh(button.dataset.refresh);
  }

  // <form data-json-action=URL [data-refresh]>: named fields as a JSON body (data-type="number" converts).
  async function submitJsonForm(form) {
    const body = {};
    form.querySelectorAll("[name]").forEach((field) => {
      const value = field.value.trim();
      if (value === "") return;
      body[field.name] = field.dataset.type === "number" ? Number(value) : value;
    });
    const button = form.querySelector("[type=submit]");
    if (button) button.disabled = true;
    const result = await callApi(form.dataset.jsonAction, form.dataset.method || "POST", body);
    if (button) button.disabled = false;
    if (result.ok) {
      toast(describe(result.data));
      form.querySelectorAll("input[name]:not([readonly])").forEach((input) => {
        if (input.name === "reason" || input.name === "target") input.value = "";
      });
    } else {
      toast(result.message, true, errorTitle(result));
    }
    refresh(form.dataset.refresh);
  }

  // --- keyboard ------------------------------------------------------------------------
  let goPending = false;

  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]") !== null;
  }

  function moveRow(step) {
    const container = document.querySelector("[data-rows]");
    if (!container) return false;
    const links = Array.from(container.querySelectorAll("tbody tr a")).filter((a) => a.offsetParent !== null);
    if (!links.length) return false;
    const index = links.indexOf(document.activeElement);
    const next = links[Math.max(0, Math.min(links.length - 1, index < 0 ? 0 : index + step))];
    document.querySelectorAll("tr.focused").forEach((tr) => tr.classList.remove("focused"));
    next.closest("tr").classList.add("focused");
    next.focus();
    next.scrollIntoView({ block: "nearest" });
    return true;
  }

  function onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const help = document.getElementById("help");
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (goPending) {
      goPending = false;
      const link = document.querySelector(`[data-go="${event.key}"]`);
      if (link) {
        event.preventDefault();
        event.stopPropagation();
        link.click();
      }
      return;
    }
    switch (event.key) {
      case "g":
        goPending = true;
        setTimeout(() => { goPending = false; }, 1500);
        break;
      case "/": {
        const search = document.querySelector("[data-search]");
        if (search) {
          event.preventDefault();
          search.focus();
          search.select();
        }
        break;
      }
      case "t":
        cycleTheme();
        break;
      case "?":
        if (help && !help.open) help.showModal();
        break;
      case "j":
      case "k":
        // The replay page handles its own j/k.
        if (!document.getElementById("replay") && moveRow(event.key === "j" ? 1 : -1)) event.preventDefault();
        break;
      default:
    }
  }

  // --- wiring --------------------------------------------------------------------------
  function onClick(event) {
    const action = event.target.closest("[data-action]");
    if (action) {
      event.preventDefault();
      runAction(action);
      return;
    }
    const fill = event.target.closest("[data-fill]");
    if (fill) {
      const values = JSON.parse(fill.dataset.fill);
      for (const [selector, value] of Object.entries(values)) {
        const input = document.querySelector(selector);
        if (input && !input.readOnly) input.value = value;
      }
      const focus = fill.dataset.focus && document.querySelector(fill.dataset.focus);
      if (focus) {
        focus.scrollIntoView({ block: "center" });
        focus.focus();
      }
      return;
    }
    const sort = event.target.closest("[data-sort]");
    if (sort) {
      // Fleet table headers: sort by the column, again to flip the order.
      const select = document.getElementById("fleet-sort");
      const order = document.getElementById("fleet-order");
      if (!select || !order) return;
      const key = sort.dataset.sort;
      const ascendingFirst = key === "agent" || key === "status" || key === "success";
      if (select.value === key) order.value = order.value === "desc" ? "asc" : "desc";
      else order.value = ascendingFirst ? "asc" : "desc";
      select.value = key;
      select.dispatchEvent(new Event("change", { bubbles: true }));
      return;
    }
    const statusFilter = event.target.closest("[data-filter-status]");
    if (statusFilter) {
      const select = document.querySelector("#fleet-filters select[name=status]");
      if (!select) return;
      select.value = select.value === statusFilter.dataset.filterStatus ? "" : statusFilter.dataset.filterStatus;
      select.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }

  function init() {
    applyThemeTitle();
    document.getElementById("theme-toggle")?.addEventListener("click", cycleTheme);
    document.getElementById("help-open")?.addEventListener("click", () => document.getElementById("help").showModal());
    // Capture phase: a "g f"-style sequence is handled (and its second key consumed) before
    // the page's own keys (the tail's p, the replay's j/k) see it.
    document.addEventListener("keydown", onKey, true);
    document.addEventListener("click", onClick);
    document.addEventListener("submit", (event) => {
      const form = event.target;
      if (form.dataset.jsonAction) {
        event.preventDefault();
        submitJsonForm(form);
      }
    });
    // Plain GET forms that apply as soon as a select changes.
    document.querySelectorAll("form[data-autosubmit]").forEach((form) => {
      form.addEventListener("change", (event) => {
        if (event.target.name === "range") {
          const custom = form.querySelector(".custom-range");
          if (custom) custom.hidden = event.target.value !== "custom";
          if (event.target.value === "custom") return;
        }
        if (event.target.type !== "datetime-local") form.requestSubmit();
      });
    });
    // A refresh that fails leaves the last good data on screen: say so (once until one succeeds).
    let unreachable = false;
    document.body.addEventListener("htmx:sendError", () => {
      if (!unreachable) {
        toast("the gateway does not answer; this page shows the last data it got and keeps trying", true, "No connection");
      }
      unreachable = true;
    });
    document.body.addEventListener("htmx:afterSwap", () => {
      if (unreachable) toast("The gateway answers again; the page is live.");
      unreachable = false;
    });
    // A fragment answered with the login page: the session ended, so go and log in.
    document.body.addEventListener("htmx:beforeSwap", (event) => {
      const url = event.detail.xhr && event.detail.xhr.responseURL;
      if (url && new URL(url).pathname === "/login") {
        event.detail.shouldSwap = false;
        window.location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
      } else if (event.detail.xhr && event.detail.xhr.status >= 400) {
        event.detail.shouldSwap = false;
      }
    });
  }

  function applyThemeTitle() {
    const theme = currentTheme();
    const button = document.getElementById("theme-toggle");
    if (button) button.title = `Theme: ${theme === "auto" ? "following the system" : theme} (t to change)`;
  }

  return { init, toast, callApi, refresh, errorTitle };
})();

window.ClawTrace = Console;
document.addEventListener("DOMContentLoaded", Console.init);
