// Small enhancements on top of htmx. The console works without this file (and without JS):
// it keeps row selection across live refreshes, offers "select all", and retries a poll that
// failed (network or server error) instead of letting the page go quietly stale.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var selected = new Set();

  // A plain form post (no htmx request to carry hx-confirm) asks first when it says data-confirm.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  function rowBoxes() {
    return document.querySelectorAll("#task-rows input[name='ids']");
  }

  function showCount() {
    var counter = document.getElementById("selected-count");
    if (counter) counter.textContent = selected.size ? "(" + selected.size + ")" : "";
    var all = document.getElementById("select-all");
    if (all) {
      var boxes = rowBoxes();
      var checked = Array.prototype.filter.call(boxes, function (box) { return box.checked; }).length;
      all.checked = boxes.length > 0 && checked === boxes.length;
      all.indeterminate = checked > 0 && checked < boxes.length;
    }
  }

  // The server renders the rows it refreshes; put back ticks made while a refresh was on its way.
  function restoreSelection() {
    rowBoxes().forEach(function (box) {
      if (selected.has(box.value)) box.checked = true;
      else if (box.checked) selected.add(box.value);
    });
    showCount();
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!(target instanceof HTMLInputElement)) return;
    if (target.id === "select-all") {
      rowBoxes().forEach(function (box) {
        box.checked = target.checked;
        if (target.checked) selected.add(box.value); else selected.delete(box.value);
      });
      showCount();
    } else if (target.name === "ids" && target.closest("#task-rows")) {
      if (target.checked) selected.add(target.value); else selected.delete(target.value);
      showCount();
    }
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    var elt = event.detail && event.detail.elt;
    if (elt && elt.id === "task-results") selected.clear();  // a new filter or page: start afresh
    if (document.getElementById("task-rows")) restoreSelection();
  });

  // A failed poll leaves the old element in place with its trigger spent: ask it to try again.
  function retryPoll(event) {
    var elt = event.detail && event.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-poll") && window.htmx) {
      window.htmx.trigger(elt, "poll-retry");
    }
  }
  document.addEventListener("htmx:sendError", retryPoll);
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail && event.detail.xhr;
    if (xhr && xhr.status >= 500) retryPoll(event);
  });

  // A page refreshing itself is not the operator at work: marked, it does not count as activity,
  // so a console left open still logs out after the idle time (webapp/console/sessions.py).
  document.addEventListener("htmx:configRequest", function (event) {
    var detail = event.detail || {};
    var elt = detail.elt;
    if (detail.verb === "get" && elt && elt.hasAttribute && elt.hasAttribute("data-poll")) {
      detail.headers["X-Console-Poll"] = "1";
    }
  });

  // An operator's action inside a live part (cancel, retry) is answered with that part, found by
  // its id. A poll of the same part landing meanwhile would detach the form, and the action's
  // answer would find no target ("Invalid re-target"). So while an action inside a live part is
  // in flight, the part's poll neither starts nor swaps: the action's answer brings the fresh
  // part, and with it the next poll.
  function actionInFlight(elt) {
    return !!(elt && elt.hasAttribute && elt.hasAttribute("data-poll") && elt.querySelector("form.htmx-request"));
  }
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (actionInFlight(event.detail && event.detail.elt)) event.preventDefault();
  });
  document.addEventListener("htmx:beforeSwap", function (event) {
    var detail = event.detail || {};
    var config = detail.requestConfig || {};
    // Only the part's own poll (a GET) is held back, never the action's answer swapped into it.
    if (config.verb === "get" && actionInFlight(detail.elt)) detail.shouldSwap = false;
  });

  document.addEventListener("DOMContentLoaded", restoreSelection);
})();

// Times: the server renders every time in one clock, the user's choice of their browser's zone or
// UTC (webapp/console/clock.py). It learns the browser's zone from the console_tz cookie set here
// (on the login page already); a page rendered before it knew, in another zone, is rendered once more.
(function () {
  "use strict";
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { zone = ""; }
  if (!zone || !/^[A-Za-z0-9_+\-]+(\/[A-Za-z0-9_+\-]+)*$/.test(zone)) return;
  var match = document.cookie.match(/(?:^|;\s*)console_tz=([^;]*)/);
  if (!match || match[1] !== zone) {
    document.cookie = "console_tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
  }
  var root = document.body;
  if (root && root.getAttribute("data-clock") === "local" && root.hasAttribute("data-clock-rerender") &&
      root.getAttribute("data-clock-zone") !== zone && document.cookie.indexOf("console_tz=" + zone) >= 0) {
    var key = "taskdeck-clock-rerendered";
    try {
      if (sessionStorage.getItem(key) === zone) return;  // once per zone: never a reload loop
      sessionStorage.setItem(key, zone);
    } catch (e) { return; }
    location.reload();
  }
})();

// Keyboard: j/k or the arrow keys move between the task table's rows, Enter opens the current
// row, x ticks its box, "/" jumps to the search box. The current row survives live refreshes.
(function () {
  "use strict";
  var currentId = null;

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("#task-rows tr[id^='task-']"));
  }

  function typing(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) &&
      !(target instanceof HTMLInputElement && target.type === "checkbox");
  }

  function mark(row, focus) {
    rows().forEach(function (other) {
      if (other !== row) other.classList.remove("row-current");
    });
    if (!row) return;
    row.classList.add("row-current");
    row.setAttribute("tabindex", "-1");
    currentId = row.id;
    if (focus) {
      row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    var all = rows();
    if (!all.length) return;
    var index = all.findIndex(function (row) { return row.id === currentId; });
    var next = index < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, index + step));
    mark(all[next], true);
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
    if (!document.getElementById("task-rows")) return;
    var key = event.key;
    if (key === "j" || key === "ArrowDown") { move(1); event.preventDefault(); }
    else if (key === "k" || key === "ArrowUp") { move(-1); event.preventDefault(); }
    else if (key === "/") {
      var search = document.getElementById("task-search");
      if (search) { search.focus(); search.select(); event.preventDefault(); }
    } else if (currentId && (key === "Enter" || key === "o" || key === "x")) {
      var row = document.getElementById(currentId);
      if (!row || (event.target !== row && event.target !== document.body)) return;
      if (key === "x") {
        var box = row.querySelector("input[name='ids']");
        if (box) box.click();
      } else {
        var link = row.querySelector("a[href]");
        if (link) link.click();
      }
      event.preventDefault();
    }
  });

  // A click on a row makes it the current one (keyboard and mouse agree).
  document.addEventListener("click", function (event) {
    var row = event.target instanceof Element && event.target.closest("#task-rows tr[id^='task-']");
    if (row) mark(row, false);
  });

  // The rows are replaced by every live refresh: keep the current row (and its focus).
  document.addEventListener("htmx:beforeSwap", function () {
    var active = document.activeElement;
    document.__rowHadFocus = !!(active && active.closest && active.closest("#task-rows") && active.tagName === "TR");
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!currentId) return;
    var row = document.getElementById(currentId);
    if (row) mark(row, document.__rowHadFocus === true);
  });
})();

// Language and clock switches: with JavaScript, a choice applies at once, and brings the operator
// back to the page as it is now (filters applied through htmx are in the address bar, not in the
// "next" the page was rendered with).
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) ||
        !(form.classList.contains("lang-switch") || form.classList.contains("clock-switch"))) return;
    var next = form.querySelector("input[name='next']");
    if (next) next.value = location.pathname + location.search;
  }, true);
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target instanceof HTMLSelectElement && target.form &&
        ((target.name === "lang" && target.form.classList.contains("lang-switch")) ||
         (target.name === "time_zone" && target.form.classList.contains("clock-switch")))) {
      target.form.requestSubmit ? target.form.requestSubmit() : target.form.submit();
    }
  });
})();
