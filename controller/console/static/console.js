// doseline console: partial updates without a page reload, and scans answered in place.
// Elements with data-poll="URL" are refreshed from that fragment every data-every ms
// (skipped while the user types in a field inside them). Forms with data-scan are sent
// in the background; the answer replaces the element named by data-target, the field is
// cleared and keeps the focus, so a keyboard-wedge scanner can scan the next code.
(function () {
  "use strict";
  var FRAGMENT = { "x-console-fragment": "1" };

  function refresh(el) {
    var active = document.activeElement;
    if (active && el.contains(active) && active.tagName === "INPUT" && active.value) {
      return Promise.resolve();
    }
    return fetch(el.getAttribute("data-poll"), {
      headers: FRAGMENT,
      credentials: "same-origin",
      cache: "no-store",
    }).then(function (r) {
      if (r.status === 401) { window.location.reload(); return; }
      if (!r.ok) { return; }
      return r.text().then(function (html) {
        if (el.innerHTML !== html) { el.innerHTML = html; }
      });
    }).catch(function () { /* offline for a moment: the next poll tries again */ });
  }

  function refreshAll() {
    document.querySelectorAll("[data-poll]").forEach(refresh);
  }

  function poll(el) {
    var every = parseInt(el.getAttribute("data-every") || "3000", 10);
    window.setInterval(function () {
      if (!document.hidden) { refresh(el); }
    }, Math.max(every, 1000));
  }

  function scanForm(form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = form.querySelector("input[name=code]");
      var body = new URLSearchParams(new FormData(form));
      var target = document.getElementById(form.getAttribute("data-target"));
      input.value = "";
      input.focus();
      fetch(form.action, {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/x-www-form-urlencoded" }, FRAGMENT),
        body: body.toString(),
        credentials: "same-origin",
      }).then(function (r) {
        if (r.status === 401) { window.location.reload(); return; }
        return r.text().then(function (html) {
          if (target) { target.innerHTML = html; }
          refreshAll();
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
    document.querySelectorAll("form[data-scan]").forEach(scanForm);
    var first = document.querySelector("form[data-scan] input[name=code]");
    if (first) { first.focus(); }
  });
})();
