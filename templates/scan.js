/* bids_qa scan report: the rating form of this one scan. */
(function () {
  'use strict';
  var BQ = window.BidsQA;
  var data = BQ.readData('report-data');
  var store = new BQ.Store(data.rating.storage_key);
  var form = document.getElementById('rating-form');
  var ui = BQ.bindForm(form, store, function () { return data.scan_id; }, null);
  ui.show(data.scan_id);
  window.addEventListener('storage', function (e) {
    if (e.key === data.rating.storage_key) { store.reload(); ui.show(data.scan_id); }
  });
}());
