/* bids_qa rating store and form (shared by scan and group reports). No innerHTML: data only via textContent. */
(function () {
  'use strict';
  var BQ = window.BidsQA = {};
  var FIELDS = ['scan_id', 'rating', 'artifacts', 'comment', 'updated'];

  BQ.readData = function (id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  };

  function clean(rec) {
    /* Normalise one rating record; null when it carries nothing. */
    if (!rec || typeof rec.scan_id !== 'string' || rec.scan_id === '') { return null; }
    var r = parseInt(rec.rating, 10);
    var arts = Array.isArray(rec.artifacts) ? rec.artifacts : (typeof rec.artifacts === 'string' && rec.artifacts !== '' ? rec.artifacts.split(',') : []);
    arts = arts.map(function (a) { return String(a).trim(); }).filter(function (a) { return a !== ''; });
    var out = {
      scan_id: rec.scan_id,
      rating: (r >= 1 && r <= 4) ? r : null,
      artifacts: arts,
      comment: typeof rec.comment === 'string' ? rec.comment : '',
      updated: typeof rec.updated === 'string' ? rec.updated : ''
    };
    if (out.rating === null && out.artifacts.length === 0 && out.comment === '') { return null; }
    return out;
  }
  BQ.clean = clean;

  function Store(key) {
    this.key = key;
    this.mem = Object.create(null);
    this.persistent = true;
    try {
      var raw = window.localStorage.getItem(key);
      var obj = raw ? JSON.parse(raw) : {};
      for (var k in obj) {
        if (Object.prototype.hasOwnProperty.call(obj, k)) {
          var c = clean(obj[k]);
          if (c) { this.mem[k] = c; }
        }
      }
    } catch (e) {
      this.persistent = false;
    }
  }
  Store.prototype.reload = function () {
    var fresh = new Store(this.key);
    this.mem = fresh.mem;
    this.persistent = fresh.persistent;
  };
  Store.prototype.get = function (id) { return this.mem[id] || null; };
  Store.prototype.save = function () {
    try {
      var plain = {};
      for (var k in this.mem) { plain[k] = this.mem[k]; }
      window.localStorage.setItem(this.key, JSON.stringify(plain));
      this.persistent = true;
    } catch (e) {
      this.persistent = false;
    }
    return this.persistent;
  };
  Store.prototype.put = function (rec) {
    var c = clean(rec);
    if (c) { this.mem[c.scan_id] = c; } else if (rec && typeof rec.scan_id === 'string') { delete this.mem[rec.scan_id]; }
    return this.save();
  };
  Store.prototype.remove = function (id) { delete this.mem[id]; return this.save(); };
  Store.prototype.clear = function () { this.mem = Object.create(null); return this.save(); };
  Store.prototype.all = function () {
    var ids = Object.keys(this.mem).sort();
    var mem = this.mem;
    return ids.map(function (id) { return mem[id]; });
  };
  BQ.Store = Store;

  /* TSV: one header line, backslash escapes for backslash, tab, newline and carriage return. */
  function esc(s) { return String(s).replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r'); }
  function unesc(s) {
    return s.replace(/\\(.)/g, function (m, c) { return c === 't' ? '\t' : c === 'n' ? '\n' : c === 'r' ? '\r' : c; });
  }
  BQ.toTSV = function (records) {
    var lines = [FIELDS.join('\t')];
    records.forEach(function (r) {
      lines.push([esc(r.scan_id), r.rating === null ? '' : String(r.rating), esc(r.artifacts.join(',')),
        esc(r.comment), esc(r.updated)].join('\t'));
    });
    return lines.join('\n') + '\n';
  };
  BQ.fromTSV = function (text) {
    var lines = text.replace(/\r\n/g, '\n').split('\n').filter(function (l) { return l !== ''; });
    if (!lines.length) { return []; }
    var head = lines[0].split('\t');
    var col = {};
    head.forEach(function (h, i) { col[h.trim()] = i; });
    if (!('scan_id' in col)) { throw new Error('the TSV has no scan_id column'); }
    return lines.slice(1).map(function (line) {
      var cells = line.split('\t');
      var get = function (name) { return (name in col && cells[col[name]] !== undefined) ? unesc(cells[col[name]]) : ''; };
      return clean({ scan_id: get('scan_id'), rating: get('rating'), artifacts: get('artifacts'),
        comment: get('comment'), updated: get('updated') });
    }).filter(Boolean);
  };
  BQ.toJSON = function (records, suffix) {
    return JSON.stringify({ format: 'bids_qa-ratings', version: 1, suffix: suffix, ratings: records }, null, 1) + '\n';
  };
  BQ.fromJSON = function (text) {
    var obj = JSON.parse(text);
    var list = Array.isArray(obj) ? obj : (obj && Array.isArray(obj.ratings) ? obj.ratings : null);
    if (!list) { throw new Error('the JSON holds no "ratings" list'); }
    return list.map(clean).filter(Boolean);
  };
  BQ.parseRatings = function (name, text) {
    var t = text.replace(/^\uFEFF/, '');
    if (/\.json$/i.test(name) || /^\s*[\[{]/.test(t)) { return BQ.fromJSON(t); }
    return BQ.fromTSV(t);
  };
  BQ.download = function (name, text, mime) {
    var blob = new Blob([text], { type: mime });
    var url = URL.createObjectURL(blob);
    var a = document.createElement('a');
    a.href = url;
    a.download = name;
    a.style.display = 'none';
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(url); a.remove(); }, 2000);
  };

  BQ.summary = function (rec, labels) {
    /* Short text of a rating for tables: "3 acceptable · motion, noise · comment". */
    if (!rec) { return ''; }
    var parts = [];
    if (rec.rating !== null) { parts.push(rec.rating + ' ' + (labels[rec.rating] || '')); }
    if (rec.artifacts.length) { parts.push(rec.artifacts.join(', ')); }
    if (rec.comment) { parts.push('comment'); }
    return parts.join(' · ');
  };

  /* Bind the rating form to a store; currentId() names the scan being rated. */
  BQ.bindForm = function (form, store, currentId, onChange) {
    var status = document.getElementById('rating-status');
    var comment = form.querySelector('textarea[name=comment]');
    function say(msg) { if (status) { status.textContent = msg; } }
    function read() {
      var checked = form.querySelector('input[name=rating]:checked');
      var arts = Array.prototype.map.call(form.querySelectorAll('input[name=artifact]:checked'), function (c) { return c.value; });
      return { scan_id: currentId(), rating: checked ? checked.value : null, artifacts: arts,
        comment: comment.value, updated: new Date().toISOString() };
    }
    function show(id) {
      var rec = store.get(id);
      Array.prototype.forEach.call(form.querySelectorAll('input[name=rating]'), function (r) {
        r.checked = !!rec && rec.rating !== null && String(rec.rating) === r.value;
      });
      Array.prototype.forEach.call(form.querySelectorAll('input[name=artifact]'), function (c) {
        c.checked = !!rec && rec.artifacts.indexOf(c.value) >= 0;
      });
      comment.value = rec ? rec.comment : '';
      say(rec ? 'saved' : 'not rated yet');
    }
    function changed() {
      var id = currentId();
      if (id === null) { return; }
      var ok = store.put(read());
      say(ok ? 'saved in this browser' : 'could not save: browser storage unavailable (export to keep ratings)');
      if (onChange) { onChange(id); }
    }
    form.addEventListener('change', changed);
    comment.addEventListener('input', changed);
    form.addEventListener('submit', function (e) { e.preventDefault(); });
    var clearBtn = document.getElementById('rating-clear');
    if (clearBtn) {
      clearBtn.addEventListener('click', function () {
        var id = currentId();
        if (id === null) { return; }
        store.remove(id);
        show(id);
        if (onChange) { onChange(id); }
      });
    }
    return { show: show };
  };
}());
