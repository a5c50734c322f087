// Small enhancements on top of htmx. The console works without this file (and without JS):
// it keeps row selection across live refreshes, offers "select all", and retries a poll that
// failed (network or server error) instead of letting the page go quietly stale.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var selected = new Set();

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

  document.addEventListener("DOMContentLoaded", restoreSelection);
})();
