// Look like the Airflow UI around us, before the first paint: its light or dark mode, its fonts and colours.
//
// Airflow 3's UI (Chakra UI v3, next-themes) marks its <html> with class "dark" or "light" and keeps the person's
// choice in localStorage "theme" ("dark", "light" or "system"). Inside Airflow's frame (same origin, so readable)
// we follow the framing page's class and copy its CSS variables onto ours; on our own (a link opened in a tab) we
// follow the stored choice, else the system's. Either way a switch later is followed at once.
(function () {
  "use strict";
  var root = document.documentElement;
  // Airflow's token -> ours (static/mledge.css gives each of ours a light and a dark default).
  var TOKENS = {
    "--chakra-fonts-body": "--font",
    "--chakra-fonts-heading": "--font-heading",
    "--chakra-fonts-mono": "--font-mono",
    "--chakra-colors-bg": "--bg",
    "--chakra-colors-bg-subtle": "--bg-subtle",
    "--chakra-colors-bg-muted": "--bg-muted",
    "--chakra-colors-fg": "--fg",
    "--chakra-colors-fg-muted": "--muted",
    "--chakra-colors-border": "--line",
    "--chakra-colors-brand-solid": "--accent",
    "--chakra-colors-brand-contrast": "--accent-contrast",
    "--chakra-colors-brand-fg": "--link",
    "--chakra-colors-success-subtle": "--ok",
    "--chakra-colors-success-fg": "--ok-fg",
    "--chakra-colors-failed-subtle": "--err",
    "--chakra-colors-failed-fg": "--err-fg",
    "--chakra-colors-failed-solid": "--drift",
    "--chakra-colors-warning-subtle": "--warn",
    "--chakra-colors-warning-fg": "--warn-fg",
    "--chakra-colors-blue-solid": "--series-0",
    "--chakra-colors-orange-solid": "--series-1",
    "--chakra-colors-green-solid": "--series-2",
    "--chakra-colors-purple-solid": "--series-3",
    "--chakra-colors-pink-solid": "--series-4",
    "--chakra-colors-teal-solid": "--series-5",
    "--chakra-colors-amber-solid": "--series-6",
    "--chakra-colors-cyan-solid": "--series-7"
  };

  function framing() {
    try {
      if (window.self !== window.top && window.parent.document) { return window.parent; }
    } catch (e) { /* another origin: no access, follow the stored choice */ }
    return null;
  }

  function stored() {
    try { return window.localStorage.getItem("theme"); } catch (e) { return null; }
  }

  function systemDark() {
    return Boolean(window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches);
  }

  function mode(parentRoot) {
    if (parentRoot && parentRoot.classList.contains("dark")) { return "dark"; }
    if (parentRoot && parentRoot.classList.contains("light")) { return "light"; }
    var chosen = stored();
    if (chosen === "dark" || chosen === "light") { return chosen; }
    return systemDark() ? "dark" : "light";
  }

  function apply() {
    var parent = framing();
    var parentRoot = parent ? parent.document.documentElement : null;
    var theme = mode(parentRoot);
    root.classList.toggle("dark", theme === "dark");
    root.classList.toggle("light", theme !== "dark");
    root.style.colorScheme = theme;
    var computed = parentRoot ? parent.getComputedStyle(parentRoot) : null;
    var copied = 0;
    Object.keys(TOKENS).forEach(function (token) {
      var value = computed ? computed.getPropertyValue(token).trim() : "";
      if (value) {
        root.style.setProperty(TOKENS[token], value);
        copied += 1;
      } else {
        root.style.removeProperty(TOKENS[token]);
      }
    });
    root.setAttribute("data-theme", theme);
    root.setAttribute("data-airflow-tokens", String(copied));
  }

  apply();
  var parent = framing();
  if (parent && window.MutationObserver) {
    new MutationObserver(apply).observe(parent.document.documentElement, {
      attributes: true, attributeFilter: ["class", "style"]
    });
  }
  window.addEventListener("storage", function (event) { if (event.key === "theme") { apply(); } });
  if (window.matchMedia) {
    var query = window.matchMedia("(prefers-color-scheme: dark)");
    if (query.addEventListener) { query.addEventListener("change", apply); }
  }
}());
