// Sortable tables, a layer filter and the copy button. No network, no libraries.
// ?sort=TABLE:KEY:asc|desc (repeatable) clicks that header on load, so a headless browser
// can check sorting; the applied sorts are recorded in <html data-sorted>.
(function () {
  var root = document.documentElement;
  function cellValue(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) return null;
    if (numeric) {
      var v = cell.getAttribute("data-v");
      return v === null || v === "" ? null : parseFloat(v);
    }
    return cell.textContent.trim().toLowerCase();
  }
  function sortTable(th) {
    var table = th.closest("table"), body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var numeric = th.getAttribute("data-type") === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._order = i; });
    rows.sort(function (a, b) {
      var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
      if (x === null || y === null) {  // empty cells last in both directions
        return (x === null) - (y === null) || a._order - b._order;
      }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return (ascending ? c : -c) || a._order - b._order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortTable(th); });
  });
  var applied = [];
  new URLSearchParams(location.search).getAll("sort").forEach(function (spec) {
    var parts = spec.split(":"), table = document.getElementById(parts[0]);
    var th = table && table.querySelector('th[data-key="' + CSS.escape(parts[1] || "") + '"]');
    if (!th) throw new Error("sort: no column " + spec);
    var want = parts[2] === "desc" ? "descending" : "ascending";
    for (var i = 0; i < 2 && th.getAttribute("aria-sort") !== want; i++) th.click();
    applied.push(spec);
  });
  root.setAttribute("data-sorted", applied.join(" "));
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    input.addEventListener("input", function () {
      var needle = input.value.toLowerCase();
      var table = document.getElementById(input.getAttribute("data-filter"));
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) < 0;
      });
    });
  });
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      var done = function () { button.textContent = "copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.textContent).then(done, function () {});
      } else if (document.execCommand("copy")) {
        done();
      }
    });
  });
  window.addEventListener("load", function () {
    // Anything fetched (image, stylesheet, script, font) would be listed here.
    root.setAttribute("data-resources", String(performance.getEntriesByType("resource").length));
  });
  root.setAttribute("data-ready", "1");
})();
