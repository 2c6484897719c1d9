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

  /* ---------- colours: by verdict (CSS classes) or by any categorical column ---------- */
  var PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  var colourBy = null;  /* null: verdict; else one of data.colour_by */
  function pointColour(i) {
    if (!colourBy) { return ''; }
    var v = colourBy.values[i];
    var k = v === null ? -1 : colourBy.levels.indexOf(v);
    return k < 0 ? '#c0c4c9' : PALETTE[k % PALETTE.length];
  }
  function paint() {
    scans.forEach(function (sc, i) {
      var col = pointColour(i);
      pointsByScan[i].forEach(function (c) { c.style.fill = col; });
    });
    var legend = document.getElementById('colour-legend');
    while (legend.firstChild) { legend.removeChild(legend.firstChild); }
    var items = colourBy ? colourBy.levels.map(function (lv, k) { return [lv, PALETTE[k % PALETTE.length]]; })
      : [['pass', 'var(--pass)'], ['review', 'var(--review)'], ['fail', 'var(--fail)'], ['error', 'var(--error)']];
    if (colourBy && colourBy.values.some(function (v) { return v === null; })) { items.push(['n/a', '#c0c4c9']); }
    items.forEach(function (it) {
      var span = document.createElement('span');
      span.className = 'legend-item';
      var sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = it[1];
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it[0]));
      legend.appendChild(span);
    });
  }

  /* ---------- per-score plots: strip (small groups), box + points, bars (0/1 flags) ---------- */
  var SMALL_GROUP = 10;
  function isBinary(col, finite) {
    /* A 0/1 flag: every value 0 or 1, and the column is named a flag or holds both values
       (a tier column that happens to hold only 1s is not a flag). */
    if (!finite.length || !finite.every(function (v) { return v === 0 || v === 1; })) { return false; }
    return /(^|[._])(flag|judged)/.test(col) || (finite.indexOf(0) >= 0 && finite.indexOf(1) >= 0 && !/tier/.test(col));
  }
  function logScale(values) {
    /* A log axis when every value is positive and they span more than two decades. */
    if (!values.length) { return false; }
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    return lo > 0 && hi / lo > 100;
  }
  function valueScale(values, log, T, ph) {
    var dom, f = log ? function (v) { return Math.log10(v); } : function (v) { return v; };
    dom = paddedRange(values.map(f));
    var sy = function (v) { return T + (1 - (f(v) - dom[0]) / (dom[1] - dom[0])) * ph; };
    var ticks;
    if (log) {
      ticks = [];
      for (var k = Math.ceil(dom[0]); k <= Math.floor(dom[1]); k++) { ticks.push(Math.pow(10, k)); }
    } else {
      ticks = niceTicks(dom[0], dom[1], 5).filter(function (t) { return t >= dom[0] && t <= dom[1]; });
    }
    return { sy: sy, ticks: ticks, log: log };
  }
  function tickText(t, log) {
    if (!log) { return fmt(t); }
    var k = Math.round(Math.log10(t));
    return (k >= -2 && k <= 4) ? String(Number(t.toPrecision(3))) : '1e' + k;
  }
  function thresholdLines(s, thr, sy, L, pw, T, ph, log) {
    /* Lines stay exact; their labels (right margin) are pushed at least 12 px apart and kept
       inside the plot's height, so close levels never print on top of each other. */
    var items = [['review', 'thr-review'], ['fail', 'thr']].map(function (p) { return [p[0], p[1], thr[p[0]]]; })
      .filter(function (p) { return p[2] !== null && p[2] !== undefined && (!log || p[2] > 0); })
      .map(function (p) { return { name: p[0], cls: p[1], value: p[2], y: sy(p[2]) }; })
      .sort(function (a, b) { return a.y - b.y; });
    items.forEach(function (it, k) { it.ly = k === 0 ? it.y + 4 : Math.max(it.y + 4, items[k - 1].ly + 12); });
    var overflow = items.length ? items[items.length - 1].ly - (T + ph + 4) : 0;
    if (overflow > 0) { items.forEach(function (it) { it.ly -= overflow; }); }
    items.forEach(function (it) {
      s.appendChild(svg('line', { 'class': it.cls, x1: L, x2: L + pw, y1: it.y, y2: it.y }));
      s.appendChild(svg('text', { x: L + pw + 4, y: it.ly, 'class': 'thr-label' }, it.name + ' ' + fmt(it.value)));
    });
  }
  function stripPlot(col, k) {
    var W = 300, H = 276, L = 52, R = 78, T = 12, B = 36;
    var pw = W - L - R, ph = H - T - B;
    var thr = data.thresholds[col] || null;
    var vals = scans.map(function (s) { return s.v[k]; });
    var finite = vals.filter(function (v) { return v !== null && isFinite(v); });
    var kind = isBinary(col, finite) ? 'bars' : (finite.length < SMALL_GROUP ? 'strip' : 'box');
    var extra = thr ? [thr.review, thr.fail].filter(function (v) { return v !== null && v !== undefined; }) : [];
    var log = kind !== 'bars' && logScale(finite.concat(extra.filter(function (v) { return v > 0; }))) &&
      extra.every(function (v) { return v > 0; });
    var scale = valueScale(kind === 'bars' ? [0] : finite.concat(extra), log, T, ph);
    var sy = scale.sy;
    var cx = L + pw / 2;

    var box = document.createElement('div');
    box.className = 'plot plot-' + kind + (log ? ' plot-log' : '');
    box.setAttribute('data-col', col);
    box.setAttribute('data-kind', kind);
    box.setAttribute('data-scale', log ? 'log' : 'linear');
    var h = document.createElement('h3');
    h.textContent = col + (log ? ' (log scale)' : '');
    box.appendChild(h);
    var s = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', overflow: 'visible' });
    s.appendChild(svg('title', {}, col + (data.descriptions[col] ? ': ' + data.descriptions[col] : '')));
    var missing = vals.length - finite.length;
    if (kind === 'bars') {
      var counts = [0, 0];
      finite.forEach(function (v) { counts[v] += 1; });
      var top = Math.max(counts[0], counts[1], 1);
      var by = function (n) { return T + ph - n / top * ph; };
      niceTicks(0, top, 4).forEach(function (t) {
        if (t > top || !Number.isInteger(t)) { return; }
        s.appendChild(svg('line', { 'class': 'grid', x1: L, x2: L + pw, y1: by(t), y2: by(t) }));
        s.appendChild(svg('text', { x: L - 4, y: by(t) + 4, 'text-anchor': 'end' }, String(t)));
      });
      [0, 1].forEach(function (v) {
        var x = L + pw * (v === 0 ? 0.12 : 0.58), w = pw * 0.3;
        s.appendChild(svg('rect', { 'class': 'bar bar-' + v, x: x, width: w, y: by(counts[v]), height: Math.max(T + ph - by(counts[v]), 0.5), 'data-value': v, 'data-count': counts[v] }));
        s.appendChild(svg('text', { x: x + w / 2, y: by(counts[v]) - 4, 'text-anchor': 'middle', 'class': 'bar-count' }, String(counts[v])));
        s.appendChild(svg('text', { x: x + w / 2, y: T + ph + 14, 'text-anchor': 'middle' }, (v === 1 && /flag/.test(col)) ? '1 (flagged)' : String(v)));
      });
      s.appendChild(svg('line', { 'class': 'axis', x1: L, x2: L + pw, y1: T + ph, y2: T + ph }));
    } else {
      scale.ticks.forEach(function (t) {
        s.appendChild(svg('line', { 'class': 'grid', x1: L, x2: L + pw, y1: sy(t), y2: sy(t) }));
        s.appendChild(svg('text', { x: L - 4, y: sy(t) + 4, 'text-anchor': 'end' }, tickText(t, log)));
      });
      s.appendChild(svg('line', { 'class': 'axis', x1: L, x2: L, y1: T, y2: T + ph }));
      if (kind === 'box' && finite.length) {
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
      if (thr) { thresholdLines(s, thr, sy, L, pw, T, ph, log); }
      scans.forEach(function (sc, i) {
        var v = vals[i];
        if (v === null || !isFinite(v)) { return; }
        var spread = kind === 'strip' ? 0.5 : 0.8;
        var x = cx + (hash01(sc.id) - 0.5) * pw * spread;
        var c = svg('circle', { 'class': 'pt ' + vclass(sc.verdict), cx: x.toFixed(1), cy: sy(v).toFixed(1), r: kind === 'strip' ? 5 : 4 });
        var node = pointLink(i, c);
        c.lastChild.textContent = sc.id + ': ' + fmt(v) + ' (' + sc.verdict + ')';
        s.appendChild(node);
      });
    }
    var note = (thr && thr.direction === 'higher_is_worse') ? 'higher is worse' :
      (thr && thr.direction === 'lower_is_worse') ? 'lower is worse' : '';
    s.appendChild(svg('text', { x: L, y: H - 3, 'class': 'muted' }, note + (missing ? (note ? ' · ' : '') + missing + ' without a value' : '')));
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
      paint();
    });
  }

  /* ---------- flow m-plane: one plot, shaded by the stored density grid ---------- */
  if (data.flow) {
    var f = data.flow;
    var W = 460, H = 400, L = 52, R = 16, T = 12, B = 36;
    var pw = W - L - R, ph = H - T - B;
    var sx = function (v) { return L + (v - f.x_range[0]) / (f.x_range[1] - f.x_range[0]) * pw; };
    var sy = function (v) { return T + (1 - (v - f.y_range[0]) / (f.y_range[1] - f.y_range[0])) * ph; };
    var wrap = document.createElement('div');
    wrap.className = 'plot';
    var s = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', overflow: 'visible', id: 'mplane-svg' });
    if (f.shade) {
      var g = svg('g', { 'class': 'density' });
      var e = f.shade.extent, rowsN = f.shade.cells.length, colsN = f.shade.cells[0].length;
      var dx = (e[1] - e[0]) / Math.max(colsN - 1, 1), dy = (e[3] - e[2]) / Math.max(rowsN - 1, 1);
      var low = f.shade.levels['5%'];
      f.shade.cells.forEach(function (row, r) {
        row.forEach(function (v, c) {
          if (v === null) { return; }
          var x0 = sx(e[0] + (c - 0.5) * dx), x1 = sx(e[0] + (c + 0.5) * dx);
          var y0 = sy(e[2] + (r + 0.5) * dy), y1 = sy(e[2] + (r - 0.5) * dy);
          /* inside the 5% level: blue, darker where the density is higher; outside: faint */
          var inside = low === undefined || v >= low;
          var base = low === undefined ? f.shade.lo : low;
          var a = inside ? (v - base) / ((f.shade.hi - base) || 1) : 0;
          var cell = svg('rect', { x: x0.toFixed(1), y: y0.toFixed(1), width: (x1 - x0 + 0.3).toFixed(1), height: (y1 - y0 + 0.3).toFixed(1),
            'class': inside ? 'dcell' : 'dcell low', 'fill-opacity': inside ? (0.15 + 0.65 * a).toFixed(2) : '0.06' });
          g.appendChild(cell);
        });
      });
      s.appendChild(g);
    } else if (f.density && f.extent) {
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
      var c = svg('circle', { 'class': 'pt ' + vclass(sc.verdict), cx: sx(a).toFixed(1), cy: sy(b).toFixed(1), r: 5 });
      s.appendChild(pointLink(i, c));
    });
    wrap.appendChild(s);
    document.getElementById('mplane-area').appendChild(wrap);
  }
  var colourSelect = document.getElementById('colour-by');
  colourSelect.addEventListener('change', function () {
    var name = colourSelect.value;
    colourBy = null;
    data.colour_by.forEach(function (c) { if (c.column === name) { colourBy = c; } });
    paint();
  });
  paint();

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
  /* ---------- column chooser (compact by default) ---------- */
  var boxes = Array.prototype.slice.call(document.querySelectorAll('#column-list input[name=column]'));
  var cells = Array.prototype.slice.call(table.querySelectorAll('[data-col]'));
  function showColumns(cols) {
    var on = {};
    cols.forEach(function (c) { on[c] = true; });
    on.scan = true;
    boxes.forEach(function (b) { b.checked = !!on[b.value]; });
    cells.forEach(function (c) { c.hidden = !on[c.getAttribute('data-col')]; });
    document.getElementById('column-count').textContent = (cols.filter(function (c) { return c !== 'scan'; }).length + 1) + ' of ' + (boxes.length + 1) + ' shown';
  }
  function checkedColumns() { return boxes.filter(function (b) { return b.checked; }).map(function (b) { return b.value; }); }
  boxes.forEach(function (b) { b.addEventListener('change', function () { showColumns(checkedColumns()); }); });
  document.getElementById('columns-compact').addEventListener('click', function () { showColumns(data.default_columns); });
  document.getElementById('columns-all').addEventListener('click', function () { showColumns(boxes.map(function (b) { return b.value; })); });
  document.getElementById('columns-none').addEventListener('click', function () { showColumns([]); });
  showColumns(data.default_columns);

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
  var raterInput = document.getElementById('rater-name');
  raterInput.value = BQ.getRater(data.rating.storage_key);
  raterInput.addEventListener('input', function () { BQ.setRater(data.rating.storage_key, raterInput.value.trim()); });
  var blindOn = false;
  var form = document.getElementById('rating-form');
  var ui = BQ.bindForm(form, store,
    function () { return current === null ? null : scans[current].id; },
    function () { if (current !== null) { scans.forEach(function (sc, i) { if (sc.id === scans[current].id) { refreshRating(i); } }); } },
    { rater: function () { return raterInput.value.trim(); }, blind: function () { return blindOn; } });
  document.querySelectorAll('.rate-btn').forEach(function (b) {
    b.addEventListener('click', function () {
      current = parseInt(b.getAttribute('data-i'), 10);
      document.getElementById('rating-scan').textContent = scans[current].id;
      panel.hidden = false;
      ui.show(scans[current].id);
    });
  });
  document.getElementById('rating-close').addEventListener('click', function () { ui.leave(); panel.hidden = true; current = null; });

  /* ---------- blind rating: scores hidden, scans in a seeded random order ---------- */
  function mulberry32(seed) {
    var a = seed >>> 0;
    return function () {
      a = (a + 0x6D2B79F5) >>> 0;
      var t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  function seededOrder(seed, n) {
    /* Fisher-Yates with mulberry32: the same seed gives every rater the same order. */
    var rand = mulberry32(seed), out = [];
    for (var i = 0; i < n; i++) { out.push(i); }
    for (var j = n - 1; j > 0; j--) {
      var k = Math.floor(rand() * (j + 1));
      var tmp = out[j]; out[j] = out[k]; out[k] = tmp;
    }
    return out;
  }
  var blindBox = document.getElementById('blind-mode');
  var seedInput = document.getElementById('blind-seed');
  var blindSection = document.getElementById('blind');
  var blindOrder = [], blindPos = 0;
  function showBlind() {
    current = blindOrder[blindPos];
    var sc = scans[current];
    document.getElementById('blind-position').textContent = 'scan ' + (blindPos + 1) + ' of ' + blindOrder.length;
    document.getElementById('blind-scan').textContent = sc.id;
    var area = document.getElementById('blind-images');
    while (area.firstChild) { area.removeChild(area.firstChild); }
    ['axial', 'coronal', 'sagittal'].forEach(function (name) {
      if (!sc.figs[name]) { return; }
      var fig = document.createElement('figure');
      var img = document.createElement('img');
      img.className = 'mosaic';
      img.src = sc.figs[name];
      img.alt = name + ' slices';
      fig.appendChild(img);
      var cap = document.createElement('figcaption');
      cap.textContent = name;
      fig.appendChild(cap);
      area.appendChild(fig);
    });
    if (!area.firstChild) { var p = document.createElement('p'); p.className = 'muted'; p.textContent = 'no images for this scan'; area.appendChild(p); }
    ui.show(sc.id);
  }
  function setBlind(on) {
    ui.leave();
    blindOn = on;
    document.body.classList.toggle('blind', on);
    blindSection.hidden = !on;
    panel.hidden = true;
    if (on) {
      var seed = parseInt(seedInput.value, 10);
      blindOrder = seededOrder(isFinite(seed) ? seed : 1, scans.length);
      blindPos = 0;
      document.getElementById('blind-form-slot').appendChild(form);
      showBlind();
      blindSection.scrollIntoView();
    } else {
      document.getElementById('panel-form-slot').appendChild(form);
      current = null;
    }
  }
  blindBox.addEventListener('change', function () { setBlind(blindBox.checked); });
  seedInput.addEventListener('change', function () { if (blindOn) { setBlind(true); } });
  document.getElementById('blind-next').addEventListener('click', function () { if (blindPos + 1 < blindOrder.length) { blindPos += 1; showBlind(); } });
  document.getElementById('blind-prev').addEventListener('click', function () { if (blindPos > 0) { blindPos -= 1; showBlind(); } });
  var rstatus = document.getElementById('ratings-status');
  function ratersNote(all) {
    var r = BQ.raters(all);
    return r.length > 1 ? ' (several raters in one file: ' + r.join(', ') + '; bids_qa ratings merge wants one file per rater)' : '';
  }
  document.getElementById('export-tsv').addEventListener('click', function () {
    var all = store.all();
    BQ.download('bids_qa_ratings.tsv', BQ.toTSV(all), 'text/tab-separated-values');
    rstatus.textContent = 'exported ' + all.length + ' rating(s) as TSV' + ratersNote(all);
  });
  document.getElementById('export-json').addEventListener('click', function () {
    var all = store.all();
    BQ.download('bids_qa_ratings.json', BQ.toJSON(all, data.suffix, blindOn ? { blind_seed: parseInt(seedInput.value, 10) } : null), 'application/json');
    rstatus.textContent = 'exported ' + all.length + ' rating(s) as JSON' + ratersNote(all);
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
