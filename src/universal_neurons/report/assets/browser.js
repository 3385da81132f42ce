// Neuron browser: filter, search, sort and scroll through one model's neuron table.
// Data comes column by column from <script type="application/json" id="neuron-data">
// (report/browser.py browser_data; number columns packed as in report/packing.py).
// Only the rows in view, plus OVERSCAN above and below, are in the DOM; #sizer keeps the
// scrollbar right. Sorting and filtering work on typed arrays and index permutations.
// Cells are written with textContent only, so no string from the data is parsed as HTML.
(function () {
  "use strict";
  var OVERSCAN = 10;
  var $ = function (id) { return document.getElementById(id); };
  var data = JSON.parse($("neuron-data").textContent);
  var cols = data.columns, n = data.n, idx = Object.create(null);
  cols.forEach(function (c, i) { idx[c.key] = i; });

  // decoding of the packed columns: packed-columns.js (loaded before this script)
  var packed = window.packedColumns(data), meta = packed.meta, colData = packed.colData;
  var column = packed.column, at = packed.at;
  var L = column(idx.layer), N = column(idx.neuron);
  var hasPage = new Uint8Array(n), hasCompare = new Uint8Array(n);
  data.pages.forEach(function (r) { hasPage[r] = 1; });
  (data.compare || []).forEach(function (r) { hasCompare[r] = 1; });
  var pageDir = data.pageDir, compareDir = data.compareDir, defaultSort = data.sort in idx ? data.sort : null;
  var univ = "is_universal" in idx ? column(idx.is_universal) : null;
  data = null;
  var maxL = 0, maxN = 0;
  for (var r1 = 0; r1 < n; r1++) { maxL = Math.max(maxL, L[r1]); maxN = Math.max(maxN, N[r1]); }
  if ("name" in idx) {  // searched like a column of neuron names: code layer*span+index
    meta[idx.name] = { span: maxN + 1, lower: null };
    colData[idx.name] = Int32Array.from(L, function (l, r) { return l * (maxN + 1) + N[r]; });
  }

  var search = $("search"), univBox = $("universal-only"), family = $("family");
  var layer = $("layer"), pageSize = $("page-size"), table = $("neuron-table");
  var viewport = $("viewport"), sizer = $("sizer"), count = $("count");
  var visible = cols.map(function (c) { return c.visible; });
  var state = { sortKey: defaultSort, sortDir: -1, page: 0 };

  function entryText(m, k) {  // display text of code k of a str/list column
    if (m.span) { return (m.prefix || "") + "L" + Math.floor(k / m.span) + "." + (k % m.span); }
    var v = m.dict[k];
    return Array.isArray(v) ? v.join(", ") : String(v);
  }
  function lowerTexts(i) {  // lower-case text per dictionary entry or neuron-name code (cached)
    var m = meta[i];
    if (!m.lower) {
      if (m.span) {
        var codes = column(i), top = -1;
        for (var r = 0; r < n; r++) { top = Math.max(top, codes[r]); }
        m.lower = new Array(top + 1);
        for (var k = 0; k <= top; k++) { m.lower[k] = entryText(m, k).toLowerCase(); }
      } else {
        m.lower = m.dict.map(function (v, k) { return entryText(m, k).toLowerCase(); });
      }
    }
    return m.lower;
  }

  function addOptions(select, values) {
    values.forEach(function (v) {
      var o = document.createElement("option");
      o.value = String(v);
      o.textContent = String(v);
      select.appendChild(o);
    });
  }
  if ("families" in idx) {
    var fams = Object.create(null);
    meta[idx.families].dict.forEach(function (list) { list.forEach(function (f) { fams[f] = 1; }); });
    addOptions(family, Object.keys(fams).sort());
  }
  if (!("families" in idx) || family.options.length < 2) { family.disabled = true; }
  var layers = {};
  for (var r0 = 0; r0 < n; r0++) { layers[L[r0]] = 1; }
  addOptions(layer, Object.keys(layers).map(Number).sort(function (a, b) { return a - b; }));
  if (!univ) { univBox.disabled = true; }

  function fmtNum(v) {
    if (v !== v) { return ""; }
    if (Number.isInteger(v)) { return String(v); }
    var a = Math.abs(v);
    return (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
  }
  function cellText(i, r) {
    var c = cols[i];
    if (c.key === "name") { return "L" + L[r] + "." + N[r]; }
    var v = at(i, r);
    if (c.type === "num") { return fmtNum(v); }
    if (c.type === "bool") { return v < 0 ? "" : (v ? "yes" : "no"); }
    return v < 0 ? "" : entryText(meta[i], v);
  }

  // --- sorting: keys ascending, missing values (Infinity) last in both directions ---
  function sortKeys(key, dir) {
    var k = new Float64Array(n), c = cols[idx[key]], m = meta[idx[key]], d = column(idx[key]), r;
    if (key === "name") {
      var span = 1;
      for (r = 0; r < n; r++) { span = Math.max(span, N[r] + 1); }
      for (r = 0; r < n; r++) { k[r] = dir * (L[r] * span + N[r]); }
    } else if (c.type === "num" || c.type === "bool") {
      for (r = 0; r < n; r++) {
        var v = d[r];
        k[r] = (v !== v || (c.type === "bool" && v < 0)) ? Infinity : dir * v;
      }
    } else {
      var rank = null;  // neuron names sort by layer, then index: the code itself
      if (!m.span) {
        var raw = m.dict.map(function (v) { return Array.isArray(v) ? v.join(",") : String(v); });
        var byText = raw.map(function (t, j) { return j; });
        byText.sort(function (a, b) { return raw[a] < raw[b] ? -1 : raw[a] > raw[b] ? 1 : 0; });
        rank = new Float64Array(raw.length);
        byText.forEach(function (j, pos) { rank[j] = pos; });
      }
      for (r = 0; r < n; r++) {
        var code = d[r];
        k[r] = code < 0 ? Infinity : dir * (rank ? rank[code] : code);
      }
    }
    return k;
  }
  // Stable LSD radix sort of the row indices by the keys as float32 (exact for values with
  // 4 significant digits, so their order is kept); ties keep the natural order.
  var order = new Int32Array(n), spare = new Int32Array(n);
  function sortRows() {
    var r;
    for (r = 0; r < n; r++) { order[r] = r; }
    if (state.sortKey === null) { return; }
    var f = new Float32Array(sortKeys(state.sortKey, state.sortDir)), u = new Uint32Array(f.buffer);
    for (r = 0; r < n; r++) { u[r] = u[r] & 0x80000000 ? ~u[r] : u[r] | 0x80000000; }
    var src = order, dst = spare, hist = new Int32Array(2048);
    for (var shift = 0; shift < 32; shift += 11) {
      hist.fill(0);
      for (r = 0; r < n; r++) { hist[(u[r] >>> shift) & 2047] += 1; }
      for (var b = 0, sum = 0; b < 2048; b++) { var h = hist[b]; hist[b] = sum; sum += h; }
      for (r = 0; r < n; r++) { var row = src[r]; dst[hist[(u[row] >>> shift) & 2047]++] = row; }
      var tmp = src; src = dst; dst = tmp;
    }
    order = src;
    spare = dst;
  }

  // --- filtering: the rows of `order` that pass every control, in sorted order ---
  // Terms: "l3.17" one neuron (exact), "l3." or "l3" one layer, "b:l3.152" the neurons whose
  // best partner in model b (its label or full name) is L3.152; anything else is text.
  var NEURON_TERM = /^l(\d+)(?:\.(\d+)?)?$/, PARTNER_TERM = /^(.+):l(\d+)\.(\d+)$/;
  var view = order;
  function textTest(t) {  // per text column: codes and which entries contain t
    var nameLike = /^[l0-9.]+$/.test(t) || t.indexOf(":") >= 0;  // else only a label can hold it
    return cols.filter(function (c) {
      var m = meta[idx[c.key]];
      return (c.type === "str" || c.type === "list") && m &&
        (nameLike || !m.span || (m.prefix && m.prefix.toLowerCase().indexOf(t) >= 0));
    }).map(function (c) {
      var lower = lowerTexts(idx[c.key]);
      return { codes: column(idx[c.key]),
               ok: Uint8Array.from(lower, function (s) { return s.indexOf(t) >= 0 ? 1 : 0; }) };
    });
  }
  function nameTest(hit) {  // which layers and indices pass: exact layer, exact index if given
    var ok = function (size, want) {
      return Uint8Array.from({ length: size + 1 }, function (_, v) { return want === undefined || v === Number(want) ? 1 : 0; });
    };
    return { layer: ok(maxL, hit[1]), neuron: ok(maxN, hit[2]) };
  }
  function partnerTest(hit) {  // the partner columns of that model: codes and the code wanted
    var who = hit[1];
    return cols.filter(function (c) {
      return c.partner && meta[idx[c.key]] && meta[idx[c.key]].span &&
        (c.prefix.toLowerCase() === who + ":" || c.partner.toLowerCase() === who);
    }).map(function (c) {
      var m = meta[idx[c.key]], l = Number(hit[2]), i = Number(hit[3]);
      return { codes: column(idx[c.key]), want: i < m.span ? l * m.span + i : -2 };
    });
  }
  function filterRows() {
    var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    var lay = layer.value === "" ? null : Number(layer.value);
    var onlyU = univ && univBox.checked, famOk = null, famCodes = null, names = [], texts = [];
    if (family.value !== "" && !family.disabled) {
      var want = family.value;
      famCodes = column(idx.families);
      famOk = Uint8Array.from(meta[idx.families].dict, function (list) { return list.indexOf(want) >= 0 ? 1 : 0; });
    }
    var partners = [];
    terms.forEach(function (t) {
      var hit = NEURON_TERM.exec(t), ph = PARTNER_TERM.exec(t);
      if (hit) { names.push(nameTest(hit)); } else if (ph) { partners.push(partnerTest(ph)); } else { texts.push(textTest(t)); }
    });
    var out = new Int32Array(n), m = 0, j, t, q;
    rows: for (j = 0; j < n; j++) {
      var r = order[j];
      if (onlyU && univ[r] !== 1) { continue; }
      if (lay !== null && L[r] !== lay) { continue; }
      if (famOk && (famCodes[r] < 0 || !famOk[famCodes[r]])) { continue; }
      for (t = 0; t < names.length; t++) { if (!names[t].layer[L[r]] || !names[t].neuron[N[r]]) { continue rows; } }
      for (t = 0; t < partners.length; t++) {
        var found = false;
        for (q = 0; q < partners[t].length && !found; q++) { found = partners[t][q].codes[r] === partners[t][q].want; }
        if (!found) { continue rows; }
      }
      for (t = 0; t < texts.length; t++) {
        var hit = false;
        for (q = 0; q < texts[t].length && !hit; q++) {
          var tc = texts[t][q], code = tc.codes[r];
          hit = code >= 0 && tc.ok[code] === 1;
        }
        if (!hit) { continue rows; }
      }
      out[m++] = r;
    }
    view = out.subarray(0, m);
  }

  // --- column chooser and header (fixed layout: widths do not jump while scrolling) ---
  var chooser = $("column-chooser");
  cols.forEach(function (c, i) {
    var label = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = visible[i];
    box.addEventListener("change", function () { visible[i] = box.checked; header(); resize(); draw(true); });
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + c.label));
    chooser.appendChild(label);
  });
  function widthCh(c, i) {  // from the dictionary, without decoding the column
    var w = c.label.length + 3, p = meta[i];
    if (c.key === "name") { return Math.max(w, 11); }
    if (c.type === "num") { return Math.max(w, c.key === "layer" || c.key === "neuron" ? 6 : 11); }
    if (c.type === "bool" || !p) { return Math.max(w, 5); }
    if (p.span) { return Math.max(w, 10); }
    var longest = 0;
    p.dict.forEach(function (v) { longest = Math.max(longest, (Array.isArray(v) ? v.join(", ") : String(v)).length); });
    return Math.max(w, Math.min(longest + 2, 32));
  }
  var widths = cols.map(widthCh);

  function sortBy(c) {
    if (state.sortKey === c.key) { state.sortDir = -state.sortDir; } else {
      state.sortKey = c.key;
      state.sortDir = (c.type === "num" || c.type === "bool") ? -1 : 1;
    }
    state.page = 0;
    sortRows();
    update();
  }
  function header() {
    var focused = document.activeElement && document.activeElement.tagName === "TH"
      ? document.activeElement.dataset.key : null;
    table.textContent = "";
    var group = document.createElement("colgroup"), total = 0, shownCols = 0;
    var tr = table.createTHead().insertRow();
    cols.forEach(function (c, i) {
      if (!visible[i]) { return; }
      var col = document.createElement("col");
      col.style.width = widths[i] + "ch";
      total += widths[i];
      shownCols += 1;
      group.appendChild(col);
      var th = document.createElement("th");
      th.textContent = c.label;
      th.title = c.title || c.key;
      th.dataset.key = c.key;
      th.tabIndex = 0;
      if (state.sortKey === c.key) {
        th.className = state.sortDir > 0 ? "sorted-asc" : "sorted-desc";
        th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      }
      th.addEventListener("click", function () { sortBy(c); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(c); }
      });
      tr.appendChild(th);
    });
    table.insertBefore(group, table.firstChild);
    table.style.width = "calc(" + total + "ch + " + (16 * shownCols) + "px)";
    table.appendChild(document.createElement("tbody"));
    if (focused !== null) {
      var again = table.querySelector('th[data-key="' + CSS.escape(focused) + '"]');
      if (again) { again.focus({ preventScroll: true }); }
    }
  }

  // --- virtual scrolling over `shown` (the current page of `view`) ---
  var shown = view, rowH = 0, drawn = [-1, -1];
  function measure() {
    var tb = table.tBodies[0], probe = tb.insertRow();
    probe.insertCell().textContent = "0";
    rowH = probe.getBoundingClientRect().height || 24;
    tb.removeChild(probe);
  }
  function resize() {
    var head = table.tHead.getBoundingClientRect().height;
    sizer.style.height = (head + shown.length * rowH) + "px";
    table.setAttribute("aria-rowcount", String(shown.length + 1));
  }
  function draw(force) {
    var first = Math.max(0, Math.floor(viewport.scrollTop / rowH) - OVERSCAN);
    var last = Math.min(shown.length, first + Math.ceil(viewport.clientHeight / rowH) + 2 * OVERSCAN);
    first = Math.max(0, Math.min(first, last - Math.ceil(viewport.clientHeight / rowH) - OVERSCAN));
    if (!force && first === drawn[0] && last === drawn[1]) { return; }
    drawn = [first, last];
    var tbody = document.createElement("tbody");
    for (var j = first; j < last; j++) {
      var r = shown[j], tr = tbody.insertRow();
      tr.setAttribute("aria-rowindex", String(j + 2));
      if (univ && univ[r] === 1) { tr.className = "universal"; }
      for (var i = 0; i < cols.length; i++) {
        if (!visible[i]) { continue; }
        var td = tr.insertCell(), text = cellText(i, r), c = cols[i];
        var pm = meta[i];
        if (c.key === "name" && hasPage[r]) {
          td.appendChild(anchor(pageDir + encodeURIComponent(text) + ".html", text));
          if (hasCompare[r]) {  // the arrow is drawn by CSS, so the cell's text stays the name
            var cmp = td.appendChild(anchor(compareDir + encodeURIComponent(text) + ".html", ""));
            cmp.title = "compare with its best partners";
            cmp.setAttribute("aria-label", "compare " + text + " with its best partners");
            cmp.className = "cmp";
          }
        } else if (c.partner && pm && pm.pages && pm.pages.has(at(i, r))) {
          td.appendChild(anchor(pm.pageDir + encodeURIComponent(text.slice(pm.prefix.length)) + ".html", text));
        } else {
          td.textContent = text;
        }
        if (c.type === "num") { td.className = "num"; } else if (c.type !== "bool") { td.title = text; }
      }
    }
    table.replaceChild(tbody, table.tBodies[0]);
    table.style.marginTop = (first * rowH) + "px";
  }

  function anchor(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function update() {  // sort, filter or page changed
    filterRows();
    var size = pageSize.value === "all" ? Math.max(view.length, 1) : Number(pageSize.value);
    var pages = Math.max(1, Math.ceil(view.length / size));
    state.page = Math.min(state.page, pages - 1);
    shown = view.subarray(state.page * size, (state.page + 1) * size);
    header();
    resize();
    viewport.scrollTop = 0;
    draw(true);
    count.textContent = view.length.toLocaleString("en-US") + " of " + n.toLocaleString("en-US") + " neurons";
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("pager").hidden = pageSize.value === "all";
  }

  var pending = false;
  viewport.addEventListener("scroll", function () {
    if (pending) { return; }
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(false); });
  });
  window.addEventListener("resize", function () { measure(); resize(); draw(true); });  // zoom too
  function reset() { state.page = 0; update(); }
  search.addEventListener("input", reset);
  [univBox, family, layer, pageSize].forEach(function (el) { el.addEventListener("change", reset); });
  $("prev").addEventListener("click", function () { state.page -= 1; update(); });
  $("next").addEventListener("click", function () { state.page += 1; update(); });
  function fromHash() {  // #universal, #family=NAME and #q=TERMS in the address set the controls
    var hash = decodeURIComponent(location.hash.slice(1));
    if (hash === "universal" && !univBox.disabled) { univBox.checked = true; }
    if (hash.lastIndexOf("family=", 0) === 0 && !family.disabled) { family.value = hash.slice(7); }
    if (hash.lastIndexOf("q=", 0) === 0) { search.value = hash.slice(2); }
  }
  fromHash();
  window.addEventListener("hashchange", function () { fromHash(); reset(); });

  header();
  measure();
  sortRows();  // the data's default sort, largest first
  update();
  performance.mark("neuron-rows-rendered");
  requestAnimationFrame(function () {
    setTimeout(function () { performance.mark("neuron-rows-painted"); }, 0);
  });
  // While idle, decode the other columns and the search texts, so the first sort or search
  // on them does not pay for it.
  var later = cols.map(function (c, i) { return i; });
  (window.requestIdleCallback || function (f) { return setTimeout(f, 50); })(function warm(deadline) {
    while (later.length && (!deadline || deadline.timeRemaining() > 5)) {
      var i = later.shift();
      if (meta[i]) { column(i); }
      if (meta[i] && meta[i].dict) { lowerTexts(i); }
    }
    if (later.length) { (window.requestIdleCallback || function (f) { return setTimeout(f, 50); })(warm); }
  });
})();
