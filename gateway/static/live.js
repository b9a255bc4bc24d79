// Live pages: server-sent events (htmx's SSE extension) make the live partials ask again at once;
// while no event stream is open, the partials poll themselves, as they did before.
(function () {
  window.digitsLive = false;
  document.addEventListener("htmx:sseOpen", function () { window.digitsLive = true; });
  document.addEventListener("htmx:sseError", function () {
    if (!window.digitsLive) { return; }
    window.digitsLive = false;  // the stream is gone: the partials go back to polling
    document.querySelectorAll("[data-live]").forEach(function (el) { htmx.trigger(el, "digits-poll"); });
  });
})();
