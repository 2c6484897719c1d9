"""Throughput machinery of the participant level (issue 10): worker-side preparation, cross-scan
batching (``score_many``, ``--scan-batch``), bounded memory, and the batched forward loop.

Scorer-level tests use the shipped weights when installed (skipped otherwise); pipeline tests run
the CLI on a few small generated volumes (4 mm, a fraction of a second each).
"""

from __future__ import annotations

import csv
import gc
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import VOXEL_MM, noisy, write_nifti

from bids_qa import batching, loading, participant, plan, scoring
from bids_qa.cli import build_parser, main
from bids_qa.config import RunConfig
from bids_qa.errors import ScanError
from bids_qa.scoring import REGISTRY, ScanScores

torch = pytest.importorskip("torch")

DEEP = [e for e in REGISTRY if e.needs_weights is not None and e.available()]
needs_weights = pytest.mark.skipif(not DEEP, reason="no model weights installed")
#: Same tolerance as tests/test_invariance.py (batch composition changes float32 sums).
REL_TOL, ABS_TOL = 1e-4, 1e-5


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def volumes(mni_small: np.ndarray):
    """Three small volumes with different numbers of anatomy slices (4 mm; 4 mm cut; 4x4x8 mm)."""
    from bids_qa.volume import volume_from_array

    return [
        volume_from_array(noisy(mni_small, 0.02, seed=1), (VOXEL_MM,) * 3),
        volume_from_array(noisy(mni_small[:, :, 14:], 0.08, seed=2), (VOXEL_MM,) * 3),
        volume_from_array(noisy(mni_small[:, :, ::2], 0.04, seed=3), (VOXEL_MM, VOXEL_MM, 8.0)),
    ]


@pytest.fixture
def fresh_volumes(volumes):
    """The same volumes with empty view caches (each test prepares its own)."""
    from dataclasses import replace

    return [replace(v, _cache={}) for v in volumes]


def _assert_same_scores(a: ScanScores, b: ScanScores) -> None:
    assert a.scorer == b.scorer and a.values.keys() == b.values.keys()
    for key, x in a.values.items():
        y = b.values[key]
        if isinstance(x, float):
            assert y == pytest.approx(x, rel=REL_TOL, abs=ABS_TOL), key
        else:
            assert x == y, key
    assert a.per_slice.keys() == b.per_slice.keys()
    for key, x in a.per_slice.items():
        np.testing.assert_allclose(b.per_slice[key], x, rtol=REL_TOL, atol=ABS_TOL, err_msg=key)
    assert (a.ruler is None) == (b.ruler is None)
    if a.ruler is not None:
        np.testing.assert_allclose(b.ruler.scores, a.ruler.scores, rtol=REL_TOL, atol=ABS_TOL)
        np.testing.assert_array_equal(b.ruler.images, a.ruler.images)
        assert b.ruler.scan_value == pytest.approx(a.ruler.scan_value, rel=REL_TOL, abs=ABS_TOL)


# ---------------------------------------------------------------------------------------------
# scorer level


@needs_weights
@pytest.mark.parametrize("entry", DEEP, ids=lambda e: e.name)
def test_score_many_equals_score_per_volume(entry, fresh_volumes):
    scorer = entry.build(device="cpu", batch_size=5)  # batches straddle scans
    one_by_one = [scorer.score(v) for v in fresh_volumes]
    together = scorer.score_many(fresh_volumes)
    assert len(together) == len(fresh_volumes)
    slice_counts = set()
    for a, b in zip(one_by_one, together, strict=True):
        _assert_same_scores(a, b)
        if "slice_index" in a.per_slice:
            slice_counts.add(len(a.per_slice["slice_index"]))
    if entry.name in {"severity", "ssim"}:
        assert len(slice_counts) == len(fresh_volumes)  # the split back per scan was exercised


@needs_weights
@pytest.mark.parametrize("entry", DEEP, ids=lambda e: e.name)
def test_prepare_caches_every_view_the_network_reads(entry, fresh_volumes, monkeypatch):
    from bids_qa import volume as volume_module

    scorer = entry.build(device="cpu", batch_size=64)
    volume = fresh_volumes[0]
    scorer.prepare(volume)
    cached = dict(volume._cache)
    assert cached, "prepare cached nothing"

    calls: list[str] = []

    def forbid(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} recomputed after prepare")

        return fail

    monkeypatch.setattr(volume_module, "slices_to_square", forbid("slices_to_square"))
    monkeypatch.setattr(volume_module, "volume_to_cube", forbid("volume_to_cube"))
    monkeypatch.setattr(type(volume), "anatomy_slices", forbid("anatomy_slices"))
    monkeypatch.setattr("bids_qa.models.severity.build_ruler", forbid("build_ruler"))
    result = scorer.score(volume)
    assert calls == [] and isinstance(result, ScanScores)
    for key, value in cached.items():  # the very same arrays, not recomputed copies
        assert volume._cache[key] is value


@needs_weights
def test_scorers_with_different_input_sizes_keep_separate_views(fresh_volumes):
    """A severity model at 192 px (weights metadata) next to SSIM at 128 px: separate stacks."""
    volume = fresh_volumes[0]
    a = scoring.scored_slices(volume, 128)
    b = scoring.scored_slices(volume, 192)
    assert a[0].shape[1:] == (128, 128) and b[0].shape[1:] == (192, 192)
    np.testing.assert_array_equal(a[1], b[1])
    assert scoring.scored_slices(volume, 128)[0] is a[0]


def test_volume_view_computes_once_and_works_without_a_cache():
    class Plain:
        pass

    counter = []
    compute = lambda: counter.append(1) or len(counter)  # noqa: E731
    assert scoring.volume_view(Plain(), ("x",), compute) == 1
    assert scoring.volume_view(Plain(), ("x",), compute) == 2  # no cache: computed each time
    from bids_qa.volume import volume_from_array

    holder = volume_from_array(np.random.default_rng(0).random((8, 8, 8), np.float32), (1.0,) * 3)
    assert scoring.volume_view(holder, ("x",), compute) == 3
    assert scoring.volume_view(holder, ("x",), compute) == 3
    assert holder.view(("x",), compute) == 3  # the same cache as the volume's own views
    assert holder.view(("y",), compute) == 4


def test_volume_view_is_computed_once_when_two_threads_ask_at_once():
    import pickle
    import threading
    import time

    from bids_qa.volume import volume_from_array

    vol = volume_from_array(np.random.default_rng(1).random((8, 8, 8), np.float32), (1.0,) * 3)
    calls = []

    def slow():
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return len(calls)

    results = []
    threads = [threading.Thread(target=lambda: results.append(vol.view(("slow",), slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [1, 1, 1, 1]
    # a view may build on another view of the same volume (the lock is re-entrant)
    assert vol.view(("outer",), lambda: vol.view(("inner",), lambda: 7) + 1) == 8
    # volumes still cross process boundaries; the copy has its own lock and the cached views
    copy = pickle.loads(pickle.dumps(vol))
    assert copy.view(("slow",), slow) == 1 and len(calls) == 1
    assert copy._lock is not vol._lock


def test_score_many_default_loops_and_checks_the_result():
    class Simple(scoring.Scorer):
        name = "simple"

        def score(self, volume, suffix=None):
            return ScanScores("simple", {"v": float(volume), "suffix": str(suffix)})

    class Broken(Simple):
        def score_many(self, volumes, suffixes=None):
            return [ScanScores("simple", {"v": 0.0})]  # one result for several volumes

    class Batched(scoring.Scorer):
        name = "batched"

        def score_many(self, volumes, suffixes=None):
            return [ScanScores("batched", {"v": 2.0 * v}) for v in volumes]

    out = scoring.checked_score_many(Simple(), [1, 2], ["T1w", None])
    assert [(r.values["v"], r.values["suffix"]) for r in out] == [(1.0, "T1w"), (2.0, "None")]
    assert Batched().score(3).values == {"v": 6.0}  # the default score is a batch of one
    assert Simple().prepare(1) is None and not Simple().in_loader and not Simple().needs_suffix
    with pytest.raises(TypeError, match="returned 1 result"):
        scoring.checked_score_many(Broken(), [1, 2], [None, None])


# ---------------------------------------------------------------------------------------------
# predict_batched


def test_predict_batched_takes_a_list_of_arrays_as_their_concatenation():
    from bids_qa.models.weights import _batches, predict_batched

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 4, 4)).astype(np.float32) for n in (3, 1, 6)]
    whole = np.concatenate(parts)
    sizes = [len(b) for b in _batches(parts, 4)]
    assert sizes == [4, 4, 2]
    for batch_size in (1, 4, 64):
        got = predict_batched(net, parts, batch_size, "cpu")
        want = predict_batched(net, whole, batch_size, "cpu")
        assert got.shape == (10, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        direct = net(torch.from_numpy(whole)[:, None]).numpy()
    np.testing.assert_allclose(predict_batched(net, parts, 4, "cpu"), direct, rtol=1e-6, atol=1e-6)
    assert predict_batched(net, [], 4, "cpu").shape == (0,)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_predict_batched_pinned_cuda_path_matches_cpu():
    """Pinned double-buffered copies + autocast: same outputs as CPU within the GPU tolerance of
    tests/test_gpu.py (1e-2), including batches that straddle arrays and a short last batch."""
    from bids_qa.models.weights import predict_batched

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 1),
    ).eval()
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 16, 16)).astype(np.float32) for n in (5, 2, 9)]
    cpu = predict_batched(net, parts, 4, "cpu", post=torch.sigmoid)
    gpu = predict_batched(net.to("cuda"), parts, 4, "cuda", post=torch.sigmoid)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# options


def test_batch_options_accept_auto_and_reject_zero(small_bids, tmp_path, capsys):
    args = build_parser().parse_args(["in", "out", "participant"])
    assert args.batch_size is None and args.scan_batch is None  # auto
    args = build_parser().parse_args(
        ["in", "out", "participant", "--batch-size", "auto", "--scan_batch", "4"]
    )
    assert args.batch_size is None and args.scan_batch == 4
    for bad in (["--scan-batch", "0"], ["--scan-batch", "many"], ["--batch-size", "-1"]):
        assert main([str(small_bids), str(tmp_path / "out"), "participant", *bad]) == 64
        assert "error" in capsys.readouterr().err


def test_execution_plan_resolves_auto_per_device(tmp_path):
    config = RunConfig(bids_dir=tmp_path, output_dir=tmp_path / "o", analysis_level="participant",
                       nprocs=3)
    cpu = plan.execution_plan(config, "cpu")
    # batch size 0: each family's own default (severity 16 slices per pass on CPU, the others 64)
    assert (cpu.batch_size, cpu.scan_batch, cpu.loader_threads, cpu.torch_threads) == (0, 1, 3, 1)
    gpu = plan.execution_plan(config, "cuda:0")
    assert (gpu.batch_size, gpu.scan_batch) == (0, plan.CUDA_SCAN_BATCH)
    fixed = RunConfig(bids_dir=tmp_path, output_dir=tmp_path / "o", analysis_level="participant",
                      nprocs=1, batch_size=7, scan_batch=2)
    chosen = plan.execution_plan(fixed, "cuda")
    assert (chosen.batch_size, chosen.scan_batch, chosen.loader_threads,
            chosen.torch_threads) == (7, 2, 1, 1)
    wide = RunConfig(bids_dir=tmp_path, output_dir=tmp_path / "o", analysis_level="participant",
                     nprocs=16)
    assert plan.execution_plan(wide, "cpu").torch_threads == 8
    with pytest.raises(ValueError, match="scan_batch"):
        RunConfig(bids_dir=tmp_path, output_dir=tmp_path, analysis_level="participant", scan_batch=0)


def test_auto_batch_size_is_each_familys_own_and_an_explicit_one_wins():
    from bids_qa.models.weights import default_batch_size
    from bids_qa.scoring import build_scorers

    auto = {s.name: s.batch_size for s in build_scorers(["severity", "ssim", "flow"])}
    assert auto == {"severity": 16, "ssim": 64, "flow": 64}
    fixed = {s.name: s.batch_size for s in build_scorers(["severity", "ssim"], batch_size=7)}
    assert fixed == {"severity": 7, "ssim": 7}
    assert default_batch_size("cuda", cpu=16) == 512 and default_batch_size("cpu", cpu=16) == 16


def test_iter_groups_keeps_order_and_a_short_last_group():
    groups = list(loading.iter_groups(iter(range(7)), 3))
    assert groups == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(loading.iter_groups(iter([]), 3)) == []


# ---------------------------------------------------------------------------------------------
# pipeline level


@pytest.fixture
def five_scans(bids_factory, mni_small: np.ndarray) -> Path:
    """Five T1w scans; sub-03 has half the slices (8 mm thick), so its slice count differs."""
    scans = [f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in (1, 2, 4, 5)]
    root = bids_factory(scans=scans, extras=False)
    write_nifti(root / "sub-03/anat/sub-03_T1w.nii.gz", noisy(mni_small[:, :, ::2], 0.03, seed=7),
                zooms=(VOXEL_MM, VOXEL_MM, 2 * VOXEL_MM))
    return root


def _run(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--no-reports", "-q", "--device", "cpu", *extra])


def _models(out: Path, label: str) -> dict[str, list[dict[str, str]]]:
    rows = _read_tsv(out / f"sub-{label}/anat/sub-{label}_T1w_qa.tsv")
    by_model: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    return by_model


@needs_weights
def test_one_bad_scan_in_a_group_gets_its_error_row_and_the_others_are_scored(
    five_scans, tmp_path, monkeypatch
):
    from bids_qa.models.ssim import SSIMScorer
    from bids_qa.volume import load_volume

    if not any(e.name == "ssim" for e in DEEP):
        pytest.skip("SSIM weights not installed")
    bad = load_volume(five_scans / "sub-03/anat/sub-03_T1w.nii.gz")
    size = SSIMScorer(device="cpu").config.input_size
    bad_count = len(scoring.scored_slices(bad, size)[1])
    good = load_volume(five_scans / "sub-01/anat/sub-01_T1w.nii.gz")
    assert len(scoring.scored_slices(good, size)[1]) != bad_count

    real_predict, real_many = SSIMScorer.predict_slices, SSIMScorer.score_many
    group_sizes: list[int] = []

    def fussy_predict(self, slices):
        parts = [slices] if isinstance(slices, np.ndarray) else list(slices)
        if any(len(p) == bad_count and p.shape[1] == size for p in parts):
            raise RuntimeError("this scan upsets the network")
        return real_predict(self, slices)

    def counting_many(self, vols, suffixes=None):
        group_sizes.append(len(vols))
        return real_many(self, vols, suffixes)

    monkeypatch.setattr(SSIMScorer, "predict_slices", fussy_predict)
    monkeypatch.setattr(SSIMScorer, "score_many", counting_many)
    out = tmp_path / "out"
    assert _run(five_scans, out, "--scan-batch", "3", "--nprocs", "2") == 0
    assert 3 in group_sizes  # sub-01..03 were scored as one group (and failed over to one by one)

    bad_rows = _models(out, "03")
    assert [r["value"] for r in bad_rows["error"]] == [
        "ssim: RuntimeError: this scan upsets the network"
    ]
    assert "ssim" not in bad_rows and {"header", "iqm"} <= set(bad_rows)
    for label in ("01", "02", "04", "05"):
        rows = _models(out, label)
        assert "error" not in rows, label
        assert {e.name for e in DEEP} <= set(rows), label
    sidecar = json.loads((out / "sub-03/anat/sub-03_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["verdict"] == "error"


def test_worker_failures_become_error_rows(five_scans, tmp_path, monkeypatch):
    """A crash anywhere in a loader thread (load, CPU scorer, prepare) is that scan's error row."""
    real_load = loading.load_scan

    def exploding_load(scan):
        if scan.path.name.startswith("sub-02"):
            raise RuntimeError("loader bug")
        return real_load(scan)

    from bids_qa.iqms import IQMScorer

    real_iqm = IQMScorer.score

    def picky_iqm(self, volume, suffix=None):
        if volume.shape[2] < 30:  # sub-03, the thick-slice scan
            raise ScanError("score", "no head found")
        return real_iqm(self, volume, suffix=suffix)

    monkeypatch.setattr(loading, "load_scan", exploding_load)
    monkeypatch.setattr(IQMScorer, "score", picky_iqm)
    out = tmp_path / "out"
    assert _run(five_scans, out, "--nprocs", "2", "--scorers", "header", "iqm") == 0
    assert [r["metric"] for r in _models(out, "02")["error"]] == ["load"]
    assert "loader bug" in _models(out, "02")["error"][0]["value"]
    rows03 = _models(out, "03")
    assert [r["value"] for r in rows03["error"]] == ["iqm: no head found"] and "header" in rows03
    for label in ("01", "04", "05"):
        assert {"header", "iqm"} == set(_models(out, label)), label


@needs_weights
def test_a_failing_prepare_is_an_error_row_and_the_scorer_is_not_rerun(five_scans, tmp_path,
                                                                     monkeypatch):
    entry = DEEP[0]
    cls = type(entry.build(device="cpu"))
    real_prepare, real_many = cls.prepare, cls.score_many
    scored_shapes: list[tuple[int, ...]] = []

    def failing_prepare(self, volume):
        if volume.shape[2] < 30:
            raise ScanError("score", "cannot prepare this one")
        return real_prepare(self, volume)

    def recording_many(self, vols, suffixes=None):
        scored_shapes.extend(v.shape for v in vols)
        return real_many(self, vols, suffixes)

    monkeypatch.setattr(cls, "prepare", failing_prepare)
    monkeypatch.setattr(cls, "score_many", recording_many)
    out = tmp_path / "out"
    assert _run(five_scans, out, "--scan-batch", "5", "--nprocs", "2",
                "--scorers", "header", entry.name) == 0
    assert [r["value"] for r in _models(out, "03")["error"]] == [
        f"{entry.name}: cannot prepare this one"
    ]
    assert len(scored_shapes) == 4 and all(s[2] >= 30 for s in scored_shapes)
    for label in ("01", "02", "04", "05"):
        assert {"header", entry.name} == set(_models(out, label)), label


@needs_weights
def test_cpu_work_runs_in_loader_threads_and_inference_in_the_main_thread(
    five_scans, tmp_path, monkeypatch
):
    from bids_qa import volume as volume_module
    from bids_qa.iqms import IQMScorer
    from bids_qa.models import weights

    threads: dict[str, set[str]] = {}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(volume_module, "slices_to_square", spy("views", volume_module.slices_to_square))
    monkeypatch.setattr(volume_module, "volume_to_cube", spy("views", volume_module.volume_to_cube))
    monkeypatch.setattr(IQMScorer, "score", spy("iqm", IQMScorer.score))
    monkeypatch.setattr(loading, "load_scan", spy("load", loading.load_scan))
    monkeypatch.setattr(weights, "predict_batched", spy("network", weights.predict_batched))
    out = tmp_path / "out"
    assert _run(five_scans, out, "--nprocs", "2", "--scan-batch", "2") == 0

    main_thread = threading.main_thread().name
    for stage in ("views", "iqm", "load"):
        assert threads[stage] and all(t.startswith("bids_qa-load") for t in threads[stage]), (
            stage, threads[stage])
    assert threads["network"] == {main_thread}
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    timings = sidecar["provenance"]["timings_s"]
    for entry in DEEP:
        assert f"prepare:{entry.name}" in timings and f"score:{entry.name}" in timings


def test_memory_stays_bounded_by_nprocs_plus_scan_batch(bids_factory, tmp_path, monkeypatch):
    """No more than nprocs (waiting) + scan-batch (being scored) volumes are alive at any time."""
    scans = [f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz" for i in range(1, 8)]
    root = bids_factory(scans=scans, extras=False)
    alive: list[weakref.ref] = []
    peaks: list[int] = []
    real_load, real_group = loading.load_and_prepare, batching.score_group

    def tracking_load(scan, scorer_set=None):
        loaded = real_load(scan, scorer_set)
        alive.append(weakref.ref(loaded.volume))
        return loaded

    def counting_group(group, scorer_set):
        gc.collect()
        peaks.append(sum(ref() is not None for ref in alive))
        return real_group(group, scorer_set)

    monkeypatch.setattr(participant, "load_and_prepare", tracking_load)
    monkeypatch.setattr(participant, "score_group", counting_group)
    assert _run(root, tmp_path / "out", "--nprocs", "2", "--scan-batch", "2",
                "--scorers", "header", "iqm") == 0
    assert len(alive) == 7 and len(peaks) == 4
    assert max(peaks) <= 2 + 2, peaks
    gc.collect()
    assert sum(ref() is not None for ref in alive) == 0  # all freed at the end


def test_score_group_runs_only_what_the_loader_did_not(five_scans):
    from bids_qa.discover import discover

    scans = discover(five_scans).scans[:2]
    scorer_set = plan.build_scorer_set(["header", "iqm"], "cpu", 64)
    prepared = loading.load_and_prepare(scans[0], scorer_set)
    assert set(prepared.results) == {"header", "iqm"}
    assert {"score:header", "score:iqm"} <= set(prepared.timings)
    plain = [(scan, loading.load_scan(scan)) for scan in scans]  # loaded without preparation
    scorings = batching.score_group([*plain, (scans[0], prepared)], scorer_set)
    for result in scorings:
        assert [r.scorer for r in result.results] == ["header", "iqm"] and not result.errors
    assert scorings[2].results[1] is prepared.results["iqm"]  # reused, not recomputed
    assert scorings[0].results[1].values["cjv"] == pytest.approx(
        prepared.results["iqm"].values["cjv"], rel=1e-6
    )
