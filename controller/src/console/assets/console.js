// zt-gateway admin console: the live parts only; every page works without it.
"use strict";
(function () {
  var table = document.getElementById("activity-table");
  var live = document.getElementById("activity-live");
  if (!table || !live || !window.EventSource) {
    return;
  }
  var body = table.tBodies[0];
  var source = new EventSource(live.getAttribute("data-stream"));
  live.textContent = "live: connected";
  source.addEventListener("activity", function (msg) {
    var e = JSON.parse(msg.data);
    var row = body.insertRow(0);
    [e.time, e.host, e.event, e.verdict, e.user, e.device, e.resource, e.connector, e.dst, e.reason]
      .forEach(function (v) {
        row.insertCell(-1).textContent = v === undefined || v === null ? "" : String(v);
      });
  });
  source.onerror = function () {
    live.textContent = "live: disconnected (reload the page to log in again)";
  };
})();
