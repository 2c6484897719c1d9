/* bids_qa group report: sortable/filterable table, strip plots, m-plane, subject search, ratings.
   Data arrive as JSON (textContent of a script block); nothing is ever written with innerHTML. */
(function () {
  'use strict';
  var BQ = window.BidsQA;
  var data = BQ.readData('report-data');
  var scans = data.scans;
  var SVGNS = 'http://www.w3.org/2000/svg';
  var VERDICTS = { pass: 1, review: 1, fail: 1, error: 1 };
  var labels = {};
  data.rating.ratings.forEach(function (r) { labels[r.value] = r.label; });
  var store = new BQ.Store(data.rating.storage_key);
  var pointsByScan = scans.map(function () { return []; });

  function vclass(v) { return VERDICTS[v] ? v : 'na'; }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, String(attrs[k])); } }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) { return 'n/a'; }
    if (Number.isInteger(v)) { return String(v); }
    return String(Number(v.toPrecision(4)));
  }
  function hash01(s) {
    /* FNV-1a: a stable jitter per scan id, so a point keeps its place between renders. */
    var h = 2166136261;
    for (var i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619) >>> 0; }
    return h / 4294967296;
  }
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { return [lo]; }
    var raw = (hi - lo) / Math.max(n - 1, 1);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    var step = mag * 10;
    for (var i = 0; i < steps.length; i++) { if (steps[i] * mag >= raw) { step = steps[i] * mag; break; } }
    var out = [];
    for (var t = Math.ceil(lo / step - 1e-9) * step; t <= hi + 1e-9 * step; t += step) { out.push(Number(t.toPrecision(12))); }
    return out;
  }
  function paddedRange(vals) {
    var f = vals.filter(function (v) { return v !== null && isFinite(v); });
    if (!f.length) { return [0, 1]; }
    var lo = Math.min.apply(null, f), hi = Math.max.apply(null, f);
    if (hi === lo) { var w = Math.abs(lo) * 0.1 || 1; return [lo - w, hi + w]; }
    var pad = 0.06 * (hi - lo);
    return [lo - pad, hi + pad];
  }
  function quantile(sorted, p) {
    var pos = (sorted.length - 1) * p, i = Math.floor(pos), f = pos - i;
    return i + 1 < sorted.length ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i];
  }
  function pointLink(i, circle) {
    var s = scans[i];
    circle.setAttribute('data-i', String(i));
    circle.appendChild(svg('title', {}, s.id + ' (' + s.verdict + ')'));
    pointsByScan[i].push(circle);
    if (s.href) {
      var a = svg('a', { href: s.href, 'class': 'pt-link', 'data-i': i });
      a.appendChild(circle);
      return a;
    }
    return circle;
  }

  /* ---------- strip / box plots ---------- */
  function stripPlot(col, k) {
    var W = 300, H = 270, L = 52, R = 70, T = 12, B = 30;
    var pw = W - L - R, ph = H - T - B;
    var thr = data.thresholds[col] || null;
    var vals = scans.map(function (s) { return s.v[k]; });
    var finite = vals.filter(function (v) { return v !== null && isFinite(v); });
    var extra = thr ? [thr.review, thr.fail] : [];
    var dom = paddedRange(finite.concat(extra.filter(function (v) { return v !== null; })));
    var sy = function (v) { return T + (1 - (v - dom[0]) / (dom[1] - dom[0])) * ph; };
    var cx = L + pw / 2;

    var box = document.createElement('div');
    box.className = 'plot';
    box.setAttribute('data-col', col);
    var h = document.createElement('h3');
    h.textContent = col;
    box.appendChild(h);
    var s = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', overflow: 'visible' });
    s.appendChild(svg('title', {}, col + (data.descriptions[col] ? ': ' + data.descriptions[col] : '')));
    niceTicks(dom[0], dom[1], 5).forEach(function (t) {
      if (t < dom[0] || t > dom[1]) { return; }
      s.appendChild(svg('line', { 'class': 'grid', x1: L, x2: L + pw, y1: sy(t), y2: sy(t) }));
      s.appendChild(svg('text', { x: L - 4, y: sy(t) + 4, 'text-anchor': 'end' }, fmt(t)));
    });
    s.appendChild(svg('line', { 'class': 'axis', x1: L, x2: L, y1: T, y2: T + ph }));
    if (finite.length) {
      var sorted = finite.slice().sort(function (a, b) { return a - b; });
      var q1 = quantile(sorted, 0.25), q2 = quantile(sorted, 0.5), q3 = quantile(sorted, 0.75), iqr = q3 - q1;
      var lo = sorted.filter(function (v) { return v >= q1 - 1.5 * iqr; })[0];
      var hi = sorted.filter(function (v) { return v <= q3 + 1.5 * iqr; }).pop();
      var bw = pw * 0.45;
      s.appendChild(svg('line', { 'class': 'axis', x1: cx, x2: cx, y1: sy(hi), y2: sy(q3) }));
      s.appendChild(svg('line', { 'class': 'axis', x1: cx, x2: cx, y1: sy(q1), y2: sy(lo) }));
      s.appendChild(svg('rect', { 'class': 'box', x: cx - bw / 2, width: bw, y: sy(q3), height: Math.max(sy(q1) - sy(q3), 0.5) }));
      s.appendChild(svg('line', { 'class': 'median', x1: cx - bw / 2, x2: cx + bw / 2, y1: sy(q2), y2: sy(q2) }));
    }
    if (thr) {
      var lastLabel = null;  /* labels of close thresholds are pushed apart, lines stay exact */
      [['review', 'thr-review'], ['fail', 'thr']].map(function (p) { return [p[0], p[1], thr[p[0]]]; })
        .filter(function (p) { return p[2] !== null && p[2] !== undefined; })
        .sort(function (a, b) { return b[2] - a[2]; })
        .forEach(function (p) {
          var y = sy(p[2]);
          s.appendChild(svg('line', { 'class': p[1], x1: L, x2: L + pw, y1: y, y2: y }));
          var ly = lastLabel === null ? y + 4 : Math.max(y + 4, lastLabel + 12);
          s.appendChild(svg('text', { x: L + pw + 4, y: ly }, p[0] + ' ' + fmt(p[2])));
          lastLabel = ly;
        });
    }
    var missing = 0;
    scans.forEach(function (sc, i) {
      var v = vals[i];
      if (v === null || !isFinite(v)) { missing += 1; return; }
      var x = cx + (hash01(sc.id) - 0.5) * pw * 0.8;
      var c = svg('circle', { 'class': 'pt ' + vclass(sc.verdict), cx: x.toFixed(1), cy: sy(v).toFixed(1), r: 4 });
      var node = pointLink(i, c);
      c.lastChild.textContent = sc.id + ': ' + fmt(v) + ' (' + sc.verdict + ')';
      s.appendChild(node);
    });
    var note = (thr && thr.direction === 'higher_is_worse') ? 'higher is worse' :
      (thr && thr.direction === 'lower_is_worse') ? 'lower is worse' : '';
    s.appendChild(svg('text', { x: L, y: H - 8 }, note + (missing ? (note ? ' · ' : '') + missing + ' without a value' : '')));
    box.appendChild(s);
    return box;
  }
  var plotArea = document.getElementById('plot-area');
  data.columns.forEach(function (col, k) { if (k < data.n_primary) { plotArea.appendChild(stripPlot(col, k)); } });
  var more = document.getElementById('more-plots');
  if (more) {  /* the other metrics are drawn the first time the reader opens them */
    more.addEventListener('toggle', function () {
      var area = document.getElementById('plot-area-more');
      if (!more.open || area.childNodes.length) { return; }
      data.columns.forEach(function (col, k) { if (k >= data.n_primary) { area.appendChild(stripPlot(col, k)); } });
      highlight();
    });
  }

  /* ---------- flow m-plane ---------- */
  if (data.flow) {
    var f = data.flow;
    var W = 440, H = 380, L = 52, R = 16, T = 12, B = 36;
    var pw = W - L - R, ph = H - T - B;
    var sx = function (v) { return L + (v - f.x_range[0]) / (f.x_range[1] - f.x_range[0]) * pw; };
    var sy = function (v) { return T + (1 - (v - f.y_range[0]) / (f.y_range[1] - f.y_range[0])) * ph; };
    var wrap = document.createElement('div');
    wrap.className = 'plot';
    var s = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', overflow: 'visible', id: 'mplane' });
    if (f.density && f.extent) {
      s.appendChild(svg('image', { href: f.density, x: sx(f.extent[0]), y: sy(f.extent[3]),
        width: sx(f.extent[1]) - sx(f.extent[0]), height: sy(f.extent[2]) - sy(f.extent[3]), preserveAspectRatio: 'none', opacity: 0.8 }));
    }
    niceTicks(f.x_range[0], f.x_range[1], 6).forEach(function (t) {
      if (t < f.x_range[0] || t > f.x_range[1]) { return; }
      s.appendChild(svg('line', { 'class': 'grid', x1: sx(t), x2: sx(t), y1: T, y2: T + ph }));
      s.appendChild(svg('text', { x: sx(t), y: T + ph + 14, 'text-anchor': 'middle' }, fmt(t)));
    });
    niceTicks(f.y_range[0], f.y_range[1], 6).forEach(function (t) {
      if (t < f.y_range[0] || t > f.y_range[1]) { return; }
      s.appendChild(svg('line', { 'class': 'grid', x1: L, x2: L + pw, y1: sy(t), y2: sy(t) }));
      s.appendChild(svg('text', { x: L - 4, y: sy(t) + 4, 'text-anchor': 'end' }, fmt(t)));
    });
    s.appendChild(svg('text', { x: L + pw / 2, y: H - 4, 'text-anchor': 'middle' }, 'flow.m1'));
    s.appendChild(svg('text', { x: 12, y: T + ph / 2, transform: 'rotate(-90 12 ' + (T + ph / 2) + ')', 'text-anchor': 'middle' }, 'flow.m2'));
    scans.forEach(function (sc, i) {
      var a = f.m1[i], b = f.m2[i];
      if (a === null || b === null) { return; }
      var c = svg('circle', { 'class': 'pt ' + vclass(sc.verdict), cx: sx(a).toFixed(1), cy: sy(b).toFixed(1), r: 4 });
      s.appendChild(pointLink(i, c));
    });
    wrap.appendChild(s);
    document.getElementById('mplane-area').appendChild(wrap);
  }

  /* ---------- table: sort and filter ---------- */
  var table = document.getElementById('scan-table');
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var rowsByScan = scans.map(function () { return null; });
  rows.forEach(function (r) { rowsByScan[parseInt(r.getAttribute('data-i'), 10)] = r; });
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  headers.forEach(function (th, col) {
    th.setAttribute('tabindex', '0');
    var sort = function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      headers.forEach(function (o) { o.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var num = th.getAttribute('data-type') === 'num';
      var key = function (r) {
        var c = r.cells[col];
        if (num) {  /* numbers sort by value; cells without one (n/a, empty) go last */
          var x = c.hasAttribute('data-sort') ? parseFloat(c.getAttribute('data-sort')) : NaN;
          return isFinite(x) ? x : null;
        }
        return (c.hasAttribute('data-sort') ? c.getAttribute('data-sort') : c.textContent.trim()).toLowerCase();
      };
      var keyed = rows.map(function (r) { return [key(r), r]; });
      keyed.sort(function (a, b) {
        if (a[0] === b[0]) { return 0; }
        if (a[0] === null || a[0] === '') { return 1; }
        if (b[0] === null || b[0] === '') { return -1; }
        return (a[0] < b[0] ? -1 : 1) * (asc ? 1 : -1);
      });
      keyed.forEach(function (p) { tbody.appendChild(p[1]); });
    };
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') { sort(); } });
  });
  var filter = document.getElementById('filter');
  var vfilter = document.getElementById('verdict-filter');
  var fstatus = document.getElementById('filter-status');
  function applyFilter() {
    var q = filter.value.trim().toLowerCase(), v = vfilter.value, shown = 0;
    rows.forEach(function (r) {
      var ok = (!v || r.getAttribute('data-verdict') === v) && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    fstatus.textContent = 'showing ' + shown + ' of ' + rows.length;
  }
  filter.addEventListener('input', applyFilter);
  vfilter.addEventListener('change', applyFilter);
  applyFilter();

  /* ---------- subject search: highlight everywhere ---------- */
  var cards = Array.prototype.slice.call(document.querySelectorAll('.card[data-i]'));
  var search = document.getElementById('subject-search');
  var sstatus = document.getElementById('search-status');
  function highlight() {
    var q = search.value.trim().replace(/^sub-/, '');
    var n = 0;
    scans.forEach(function (sc, i) {
      var on = q !== '' && sc.subject === q;
      var off = q !== '' && !on;
      if (on) { n += 1; }
      var r = rowsByScan[i];
      if (r) { r.classList.toggle('hl', on); r.classList.toggle('dim', off); }
      pointsByScan[i].forEach(function (c) {
        c.classList.toggle('hl', on);
        c.classList.toggle('dim', off);
        if (on) { var node = c.parentNode.tagName.toLowerCase() === 'a' ? c.parentNode : c; node.parentNode.appendChild(node); }
      });
    });
    cards.forEach(function (c) {
      var sc = scans[parseInt(c.getAttribute('data-i'), 10)];
      c.classList.toggle('hl', q !== '' && sc.subject === q);
      c.classList.toggle('dim', q !== '' && sc.subject !== q);
    });
    sstatus.textContent = q === '' ? '' : (n ? 'sub-' + q + ': ' + n + ' scan' + (n === 1 ? '' : 's') + ' highlighted' : 'no scan of sub-' + q);
  }
  search.addEventListener('input', highlight);

  /* ---------- ratings ---------- */
  var panel = document.getElementById('rating-panel');
  var current = null;
  function refreshRating(i) {
    var text = BQ.summary(store.get(scans[i].id), labels);
    document.querySelectorAll('[data-i="' + i + '"] .rating-text').forEach(function (e) { e.textContent = text; });
  }
  function refreshAll() { scans.forEach(function (sc, i) { refreshRating(i); }); }
  var ui = BQ.bindForm(document.getElementById('rating-form'), store,
    function () { return current === null ? null : scans[current].id; },
    function () { if (current !== null) { scans.forEach(function (sc, i) { if (sc.id === scans[current].id) { refreshRating(i); } }); } });
  document.querySelectorAll('.rate-btn').forEach(function (b) {
    b.addEventListener('click', function () {
      current = parseInt(b.getAttribute('data-i'), 10);
      document.getElementById('rating-scan').textContent = scans[current].id;
      panel.hidden = false;
      ui.show(scans[current].id);
    });
  });
  document.getElementById('rating-close').addEventListener('click', function () { panel.hidden = true; current = null; });
  var rstatus = document.getElementById('ratings-status');
  document.getElementById('export-tsv').addEventListener('click', function () {
    var all = store.all();
    BQ.download('bids_qa_ratings.tsv', BQ.toTSV(all), 'text/tab-separated-values');
    rstatus.textContent = 'exported ' + all.length + ' rating(s) as TSV';
  });
  document.getElementById('export-json').addEventListener('click', function () {
    var all = store.all();
    BQ.download('bids_qa_ratings.json', BQ.toJSON(all, data.suffix), 'application/json');
    rstatus.textContent = 'exported ' + all.length + ' rating(s) as JSON';
  });
  var input = document.getElementById('import-file');
  input.addEventListener('change', function () {
    var file = input.files && input.files[0];
    if (!file) { return; }
    var reader = new FileReader();
    reader.onload = function () {
      try {
        var recs = BQ.parseRatings(file.name, String(reader.result));
        recs.forEach(function (r) { store.mem[r.scan_id] = r; });
        var ok = store.save();
        refreshAll();
        if (current !== null) { ui.show(scans[current].id); }
        rstatus.textContent = 'imported ' + recs.length + ' rating(s) from ' + file.name + (ok ? '' : ' (browser storage unavailable: kept for this page only)');
      } catch (err) {
        rstatus.textContent = 'could not import ' + file.name + ': ' + err.message;
      }
      input.value = '';
    };
    reader.onerror = function () { rstatus.textContent = 'could not read ' + file.name; };
    reader.readAsText(file);
  });
  var confirmBox = document.getElementById('clear-confirm');
  document.getElementById('clear-ratings').addEventListener('click', function () { confirmBox.hidden = false; });
  document.getElementById('clear-no').addEventListener('click', function () { confirmBox.hidden = true; });
  document.getElementById('clear-yes').addEventListener('click', function () {
    store.clear();
    confirmBox.hidden = true;
    refreshAll();
    if (current !== null) { ui.show(scans[current].id); }
    rstatus.textContent = 'all ratings of this folder deleted';
  });
  window.addEventListener('storage', function (e) {
    if (e.key === data.rating.storage_key) { store.reload(); refreshAll(); if (current !== null) { ui.show(scans[current].id); } }
  });
  refreshAll();
}());
