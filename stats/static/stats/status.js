// Swap in the page's live part every few seconds: no reload, no flicker, no library.
// (htmx would do the same in 14 kB; this is all the page needs.)
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) return;
  var every = (Number(live.dataset.every) || 15) * 1000;
  function refresh() {
    if (document.hidden) return; // a background tab asks for nothing
    fetch(live.dataset.src, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error(response.status);
        return response.text();
      })
      .then(function (html) { live.innerHTML = html; live.removeAttribute("aria-busy"); })
      .catch(function () { live.setAttribute("aria-busy", "true"); }); // keep the last figures
  }
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
