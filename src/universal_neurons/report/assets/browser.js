// Neuron browser: filter, search, sort and page through one model's neuron table.
// Data comes from <script type="application/json" id="neuron-data"> (see report/browser.py).
// Cells are written with textContent only, so no string from the data is parsed as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("neuron-data").textContent);
  var cols = data.columns;
  var idx = {};
  cols.forEach(function (c, i) { idx[c.key] = i; });
  var rows = data.rows.map(function (r, i) { return { cells: r, page: data.pages[i] === 1 }; });

  var $ = function (id) { return document.getElementById(id); };
  var search = $("search"), univ = $("universal-only"), family = $("family"), layer = $("layer");
  var pageSize = $("page-size"), table = $("neuron-table"), count = $("count");
  var state = { sortKey: data.sort || null, sortDir: -1, page: 0, shown: null };
  var visible = cols.map(function (c) { return c.visible; });

  function addOptions(select, values) {
    values.forEach(function (v) {
      var o = document.createElement("option");
      o.value = String(v);
      o.textContent = String(v);
      select.appendChild(o);
    });
  }
  if ("families" in idx) {
    var fams = {};
    rows.forEach(function (r) { (r.cells[idx.families] || []).forEach(function (f) { fams[f] = 1; }); });
    addOptions(family, Object.keys(fams).sort());
  }
  if (!("families" in idx) || family.options.length < 2) { family.disabled = true; }
  var layers = {};
  rows.forEach(function (r) { layers[r.cells[idx.layer]] = 1; });
  addOptions(layer, Object.keys(layers).map(Number).sort(function (a, b) { return a - b; }));
  if (!("is_universal" in idx)) { univ.disabled = true; }

  // Column chooser.
  var chooser = $("column-chooser");
  cols.forEach(function (c, i) {
    var label = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = visible[i];
    box.addEventListener("change", function () { visible[i] = box.checked; render(); });
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + c.label));
    chooser.appendChild(label);
  });

  function fmt(v, type) {
    if (v === null || v === undefined) { return ""; }
    if (type === "bool") { return v ? "yes" : "no"; }
    if (type === "list") { return v.join(", "); }
    if (type === "num" && typeof v === "number" && !Number.isInteger(v)) {
      var a = Math.abs(v);
      return (a !== 0 && (a < 1e-3 || a >= 1e6)) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
    }
    return String(v);
  }

  function haystack(r) {
    var parts = [];
    cols.forEach(function (c, i) {
      if (c.type === "str" || c.type === "list") { parts.push(fmt(r.cells[i], c.type)); }
    });
    return parts.join(" ").toLowerCase();
  }
  var NEURON_TERM = /^l\d+(\.\d*)?$/;
  rows.forEach(function (r) { r.text = haystack(r); r.name = String(r.cells[idx.name]).toLowerCase(); });

  function filtered() {
    var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    var fam = family.value, lay = layer.value, onlyU = univ.checked;
    return rows.filter(function (r) {
      if (onlyU && !r.cells[idx.is_universal]) { return false; }
      if (lay !== "" && String(r.cells[idx.layer]) !== lay) { return false; }
      if (fam !== "" && (r.cells[idx.families] || []).indexOf(fam) < 0) { return false; }
      for (var t = 0; t < terms.length; t++) {
        // "L3." or "l3.17": a neuron name prefix; anything else: a substring of a text column
        if (NEURON_TERM.test(terms[t])) {
          if (r.name.indexOf(terms[t]) !== 0) { return false; }
        } else if (r.text.indexOf(terms[t]) < 0) { return false; }
      }
      return true;
    });
  }

  function compare(a, b) {
    if (state.sortKey === null) { return 0; }
    var i = idx[state.sortKey];
    if (state.sortKey === "name") {  // natural order: layer, then neuron
      return state.sortDir * ((a.cells[idx.layer] - b.cells[idx.layer]) ||
                              (a.cells[idx.neuron] - b.cells[idx.neuron]));
    }
    var x = a.cells[i], y = b.cells[i];
    var xn = x === null || x === undefined, yn = y === null || y === undefined;
    if (xn || yn) { return xn === yn ? 0 : (xn ? 1 : -1); }  // missing values last
    if (Array.isArray(x)) { x = x.join(","); y = y.join(","); }
    if (typeof x === "boolean") { x = +x; y = +y; }
    return state.sortDir * (x < y ? -1 : x > y ? 1 : 0);
  }

  function header() {
    var thead = table.tHead || table.createTHead();
    thead.textContent = "";
    var tr = thead.insertRow();
    cols.forEach(function (c, i) {
      if (!visible[i]) { return; }
      var th = document.createElement("th");
      th.textContent = c.label;
      th.title = c.title || c.key;
      th.dataset.key = c.key;
      if (state.sortKey === c.key) { th.className = state.sortDir > 0 ? "sorted-asc" : "sorted-desc"; }
      th.addEventListener("click", function () {
        if (state.sortKey === c.key) { state.sortDir = -state.sortDir; } else {
          state.sortKey = c.key;
          state.sortDir = (c.type === "num" || c.type === "bool") ? -1 : 1;
        }
        state.page = 0;
        render();
      });
      tr.appendChild(th);
    });
  }

  function render() {
    var list = filtered();
    list.sort(compare);
    var size = pageSize.value === "all" ? list.length || 1 : Number(pageSize.value);
    var pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(state.page, pages - 1);
    header();
    var old = table.tBodies[0];
    var tbody = document.createElement("tbody");
    list.slice(state.page * size, (state.page + 1) * size).forEach(function (r) {
      var tr = tbody.insertRow();
      if ("is_universal" in idx && r.cells[idx.is_universal]) { tr.className = "universal"; }
      cols.forEach(function (c, i) {
        if (!visible[i]) { return; }
        var td = tr.insertCell();
        var text = fmt(r.cells[i], c.type);
        if (c.key === "name" && r.page) {
          var a = document.createElement("a");
          a.href = data.pageDir + encodeURIComponent(text) + ".html";
          a.textContent = text;
          td.appendChild(a);
        } else {
          td.textContent = text;
        }
        if (c.type === "num") { td.className = "num"; }
      });
    });
    if (old) { table.replaceChild(tbody, old); } else { table.appendChild(tbody); }
    count.textContent = list.length + " of " + rows.length + " neurons";
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    state.shown = list;
  }

  function reset() { state.page = 0; render(); }
  search.addEventListener("input", reset);
  [univ, family, layer, pageSize].forEach(function (el) { el.addEventListener("change", reset); });
  $("prev").addEventListener("click", function () { state.page -= 1; render(); });
  $("next").addEventListener("click", function () { state.page += 1; render(); });
  if (location.hash === "#universal" && !univ.disabled) { univ.checked = true; }
  render();
})();
