// Small conveniences only: every page works without this file.
(function () {
  "use strict";
  // Filters apply as soon as a choice changes.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
  // One click, one request: a slow review command must not be sent twice.
  document.querySelectorAll("form[method=post]").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
    });
  });
  // Inside Airflow's sandboxed frame, new tabs (the MLflow links) may be blocked: say where they work.
  if (window.self !== window.top) {
    document.documentElement.classList.add("framed");  // Airflow's own nav is beside us: hide ours
    document.querySelectorAll(".framed-hint").forEach(function (hint) {
      hint.hidden = false;
      hint.querySelectorAll("a.self-link").forEach(function (a) { a.href = window.location.href; });
    });
  }
}());
