// Live pages: server-sent events (htmx's SSE extension) make the live partials ask again at once;
// while no event stream is open, the partials poll themselves, as they did before.
(function () {
  window.digitsLive = false;
  var again = {};  // ids of live partials that heard a notice while their answer was on its way

  function askAll() {
    document.querySelectorAll("[data-live]").forEach(function (el) { htmx.trigger(el, "digits-poll"); });
  }

  // Each time a stream opens (first or again) the partials ask once: notices sent while no stream
  // was open (before the first, between a stream's end and the next) reach no page.
  document.addEventListener("htmx:sseOpen", function () { window.digitsLive = true; askAll(); });
  document.addEventListener("htmx:sseError", function () {
    if (!window.digitsLive) { return; }
    window.digitsLive = false;  // the stream is gone: the partials go back to polling
    askAll();
  });

  // A partial replaces itself with its answer (outerHTML), and htmx queues a request triggered
  // while one is on its way on the element being replaced, where it is dropped: so a notice heard
  // meanwhile is remembered and the new element asks again once it is in.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var el = e.detail.elt;
    if (el.hasAttribute("data-live")) { el.digitsAsking = true; }
  });
  document.addEventListener("htmx:sseMessage", function (e) {
    if (e.target.digitsAsking) { e.target.digitsAgain = true; }
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    var el = e.detail.elt;
    if (el.digitsAgain && el.id && e.detail.shouldSwap) { again[el.id] = true; }
    el.digitsAsking = el.digitsAgain = false;
  });
  document.addEventListener("htmx:load", function (e) {
    var el = e.detail.elt;
    if (el.id && again[el.id]) {
      delete again[el.id];
      htmx.trigger(el, "digits-poll");
    }
  });
})();
