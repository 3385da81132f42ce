// Decoding of the neuron browser's packed columns (report/packing.py, report/browser.py
// browser_data). packedColumns(data) returns {meta, colData, column, at}: a cell reads its
// word straight from the packed string; a whole column is decoded into a typed array only
// when it is sorted or filtered on.
window.packedColumns = function (data) {
  "use strict";
  var cols = data.columns, n = data.n;
  var B64 = new Uint8Array(128), POW = new Float64Array(701);  // POW[350 + k] = 10^k
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".split("").forEach(
    function (ch, i) { B64[ch.charCodeAt(0)] = i; });
  for (var k0 = -350; k0 <= 350; k0++) {
    POW[350 + k0] = Math.abs(k0) > 308 ? Math.pow(10, k0 >> 1) * Math.pow(10, k0 - (k0 >> 1)) : Number("1e" + k0);
  }
  // meta[i]: {s, w, float, lo, e0, missing} and, for text, {dict | span, lower}; null: name.
  var meta = cols.map(function (c, i) {
    var v = data.values[i];
    if (v === null || v === undefined) { return null; }
    var p = v.names || v.codes || v;
    var m = { s: p.f !== undefined ? p.f : p.s, w: p.w, float: p.f !== undefined, lo: p.min - 1,
              e0: p.e0 - 3, missing: c.type === "num" ? NaN : -1, dict: v.dict, span: v.span, lower: null,
              prefix: c.prefix || "", pages: v.pages ? new Set(v.pages) : null, pageDir: v.pageDir };
    return m;
  });
  function decode(m, x) {  // one word -> value (floats: ±m·10^(e-3), m in 1000..9999)
    if (!m.float) { return x === 0 ? m.missing : x + m.lo; }
    if (x < 2) { return x === 0 ? NaN : 0; }
    x -= 2;
    var q = x >>> 1, d = (q / 9000) | 0, mant = 1000 + q - d * 9000, e = m.e0 + d;
    var v = e < 0 ? mant / POW[350 - e] : mant * POW[350 + e];
    return (x & 1) ? -v : v;
  }
  function word(m, r) {
    var pos = r * m.w, x = 0;
    for (var k = 0; k < m.w; k++) { x = x * 64 + B64[m.s.charCodeAt(pos + k)]; }
    return x;
  }
  // column(i): num -> Float64Array (NaN: missing); bool -> Int8Array and text codes ->
  // Int32Array (-1: missing).
  var colData = cols.map(function () { return null; });
  function column(i) {
    var m = meta[i];
    if (colData[i] === null && m !== null) {
      var out = cols[i].type === "num" ? new Float64Array(n) : cols[i].type === "bool" ? new Int8Array(n) : new Int32Array(n);
      for (var r = 0, pos = 0, w = m.w, s = m.s; r < n; r++) {
        var x = 0;
        for (var k = 0; k < w; k++) { x = x * 64 + B64[s.charCodeAt(pos++)]; }
        out[r] = decode(m, x);
      }
      colData[i] = out;
    }
    return colData[i];
  }
  function at(i, r) { return colData[i] !== null ? colData[i][r] : decode(meta[i], word(meta[i], r)); }  return { meta: meta, colData: colData, column: column, at: at };
};
