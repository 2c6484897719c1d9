"""Train the SSIM-regression model (Sciarra et al.) on clean slices corrupted by simulated motion.

Each sample is drawn from ``numpy.random.default_rng([seed, i])`` (paper Sec. II, Fig. 1):

1. a random slice of a random clean volume, in a random plane (2D acquisitions: the acquisition plane
   only, :mod:`bids_qa.training.slices`), randomly flipped/transposed, then padded to a square field
   of view and resized to the network's input grid (:func:`to_sim_grid`; paper: 256 x 256, ours:
   ``--input-size``, 128), as inference prepares slices;
2. contrast augmentation with probability ``P_CONTRAST``: one of random gamma, log, sigmoid or
   adaptive histogram equalisation (:func:`bids_qa.training.augment.augment_contrast`), after which the slice
   is rescaled so its head 99th percentile is 1 again, as whole-volume normalisation does at inference;
3. motion, one of
   - none (probability ``P_CLEAN``): label SSIM = 1, so that clean scans are learnt as clean;
   - beyond-calibration motion (probability ``P_STRONG``, :func:`strong_motion`): the simulator's
     full-amplitude poses times U[1, 3], so labels reach ~0.3;
   - otherwise :func:`bids_qa.training.augment.motion_slice_pair`: TorchIO's motion model (``tio.Motion``,
     the transform ``RandomMotion`` applies; Shaw et al.) or our segmented k-space model with equal
     probability, amplitude uniform in [0, 8 degrees / 8 mm] (many mild cases);
4. label = SSIM (Wang et al., Gaussian window) of the corrupted slice against the clean one on that
   grid, data range = clean max - min (:func:`bids_qa.similarity.ssim`); model input = the corrupted
   slice rescaled as whole-volume normalisation would (:func:`renormalise`) and passed through
   :func:`bids_qa.training.slices.to_model_input` (an identity resize at the input size).

Loss: MSE; optimiser: Adam, learning rate 1e-3 (paper), with a cosine decay to 5% over the run (ours:
a short CPU run needs the decay to reach a low residual spread). The network with the lowest MSE on a
fixed simulated validation set (validation-split volumes) is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.models.ssim import (
    BIN_COUNTS,
    NAME,
    SSIMConfig,
    build_resnet,
    class_bins,
    class_clinical,
)
from bids_qa.preprocess import renormalise, to_model_input
from bids_qa.training import loop
from bids_qa.training.data import synthetic_mix
from bids_qa.training.slices import (
    SliceSource,
    augment_geometry,
    draw_slice,
    make_source,
)
from bids_qa.volume import slices_to_square

#: The Sciarra et al. figures logged at validation and printed after evaluation.
REPORTED_METRICS = (
    "residual_mean",
    "residual_sd",
    "accuracy_bins3",
    "accuracy_bins5",
    "accuracy_bins10",
    "accuracy_clinical",
)
#: Probability of an uncorrupted sample (label 1).
P_CLEAN = 0.08
#: Probability of contrast augmentation.
P_CONTRAST = 0.75
#: Probability of motion beyond the calibrated amplitude (:func:`strong_motion`).
P_STRONG = 0.4
#: Largest amplitude factor of :func:`strong_motion` (x 8 degrees / 8 mm).
STRONG_MAX_FACTOR = 3.0


@dataclass(frozen=True)
class SampleConfig:
    """How training/evaluation samples are drawn (stored in the weights' metadata)."""

    p_clean: float = P_CLEAN
    p_contrast: float = P_CONTRAST
    p_strong: float = P_STRONG
    strong_max_factor: float = STRONG_MAX_FACTOR
    #: Probability of nuisance Rician noise added to the input *after* labelling (the label stays the
    #: motion SSIM): teaches the network that a noisy scan is not a moved one. 0 in evaluation.
    p_noise: float = 0.0
    noise_max_std: float = 0.04

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa train ssim", description=__doc__.splitlines()[0])
    loop.add_common_arguments(p, steps=3000, batch_size=32, lr=1e-3)
    p.add_argument(
        "--input-size", type=int, default=128, help="side of the square slice the network reads"
    )
    p.add_argument(
        "--width", type=int, default=16, help="channels of the first ResNet stage (paper: 64)"
    )
    p.add_argument(
        "--synthetic", type=int, default=6, help="synthetic MNI-derived volumes added to training"
    )
    p.add_argument("--val-size", type=int, default=400, help="fixed simulated validation slices")
    p.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="N",
        help="after training, evaluate the best weights on N simulated validation slices "
        "(writes evaluation.json in the run folder)",
    )
    p.add_argument(
        "--batch-augment",
        type=int,
        default=2,
        help="train on each batch in this many orientations (1-4; rotations by 90 degrees)",
    )
    p.add_argument(
        "--p-noise",
        type=float,
        default=0.0,
        help="probability of nuisance noise on the input after labelling (label unchanged)",
    )
    p.add_argument(
        "--p-clean",
        type=float,
        default=P_CLEAN,
        help="probability of an uncorrupted training sample, label SSIM 1 (validation keeps "
        f"{P_CLEAN}, so runs stay comparable)",
    )
    p.add_argument(
        "--noise-max-std",
        type=float,
        default=SampleConfig().noise_max_std,
        help="largest nuisance-noise SD on the normalised scale (drawn uniformly from 0.005)",
    )
    p.add_argument(
        "--keep-validated",
        action="store_true",
        help="also write the weights of every validated step (step<N>.safetensors), so that a "
        "step can be chosen afterwards by the verdict's figures rather than the validation MSE",
    )
    return p


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------


def strong_motion(
    img: np.ndarray,
    zooms: tuple[float, float],
    rng: np.random.Generator,
    max_factor: float = STRONG_MAX_FACTOR,
) -> tuple[np.ndarray, float, dict]:
    """Motion beyond the simulator's calibrated full amplitude, for labels down to ~0.3.

    Draws :func:`bids_qa.artifacts.sample_params` at severity 1 (8 degrees / 8 mm reached by one
    pose), multiplies every rotation and translation by ``f ~ U[1, max_factor]``, picks TorchIO's or
    our k-space model with equal probability (as :func:`bids_qa.training.augment.motion_slice_pair` does) and
    labels the result with :func:`bids_qa.similarity.ssim` on the same grid and data range.
    """
    from bids_qa import artifacts, similarity
    from bids_qa.training import augment

    params = artifacts.sample_params("motion", rng, 1.0, ndim=2)
    factor = float(rng.uniform(1.0, max_factor))
    params["rotations_deg"] = [float(r) * factor for r in params["rotations_deg"]]
    params["translations_mm"] = [
        [float(t) * factor for t in tr] for tr in params["translations_mm"]
    ]
    params["model"] = augment.SLICE_MOTION_MODELS[
        int(rng.integers(len(augment.SLICE_MOTION_MODELS)))
    ]
    params["amplitude_factor"] = factor
    out = artifacts.apply_artifact(img, "motion", params, zooms)
    data_range = float(img.max() - img.min()) or 1.0
    return out, similarity.ssim(img, out, data_range), params


def _single_thread_itk() -> None:
    """TorchIO's motion resamples with SimpleITK, which otherwise starts one thread per core."""
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # pragma: no cover - SimpleITK comes with torchio
        pass


class SSIMSampleMaker:
    """Picklable sample factory: ``maker(rng) -> (model input (S, S), SSIM label)``.

    With ``sizes`` holding more than one size the input is a tuple, one array per size (same sample).
    """

    def __init__(
        self,
        sources: list[SliceSource],
        sizes: tuple[int, ...],
        cfg: SampleConfig = SampleConfig(),
    ) -> None:
        if not sources:
            raise ValueError("no slice source to draw samples from")
        self.sources = sources
        self.sizes = tuple(sizes)
        self.cfg = cfg
        self._itk_set = False

    def simulate(self, rng: np.random.Generator) -> dict[str, Any]:
        """One simulated pair at native resolution: clean, corrupted, mask, zooms, label, info."""
        from bids_qa import artifacts
        from bids_qa.training import augment

        k, img, mask, zooms = draw_slice(self.sources, rng)
        img, mask, zooms = augment_geometry(img, mask, zooms, rng)
        img, mask, zooms = to_sim_grid(img, mask, zooms, self.sizes[0])
        contrast = rng.random() < self.cfg.p_contrast
        if contrast:
            img = rescale_head(augment.augment_contrast(img, rng), mask)
        u = rng.random()
        if u < self.cfg.p_clean:
            corrupted, label, kind = img, 1.0, "clean"
        elif u < self.cfg.p_clean + self.cfg.p_strong:
            corrupted, label, params = strong_motion(img, zooms, rng, self.cfg.strong_max_factor)
            kind = f"strong-{params['model']}"
        else:
            corrupted, label, info = augment.motion_slice_pair(img, rng, zooms=zooms)
            kind = str(info.params.get("model"))
        if self.cfg.p_noise > 0 and rng.random() < self.cfg.p_noise:  # no draw when disabled
            std = float(rng.uniform(0.005, self.cfg.noise_max_std))
            params = {"std": std, "seed": int(rng.integers(0, 2**31 - 1))}
            corrupted = artifacts.apply_artifact(corrupted, "noise", params)
            kind += "+noise"
        return {
            "source": k,
            "clean": img,
            "corrupted": corrupted,
            "mask": mask,
            "zooms": zooms,
            "label": label,
            "kind": kind,
            "contrast": bool(contrast),
        }

    def __call__(self, rng: np.random.Generator):
        if not self._itk_set:
            _single_thread_itk()
            self._itk_set = True
        s = self.simulate(rng)
        x = renormalise(s["corrupted"], s["clean"], s["mask"])
        inputs = tuple(
            to_model_input(x, s["zooms"], size).astype(np.float32) for size in self.sizes
        )
        label = np.float32(s["label"])
        return (inputs[0] if len(inputs) == 1 else inputs), label


def to_sim_grid(img: np.ndarray, mask: np.ndarray, zooms: tuple[float, float], size: int):
    """A native slice brought to the ``size`` x ``size`` grid the scorer reads, with its head mask
    and the new (square) pixel size: padded to a square field of view and resized, as
    :meth:`Volume.slice_stack` does.

    Motion is simulated and SSIM measured on the grid the network reads, as in the paper (which
    resized every slice to its 256 x 256 input before corrupting it). This makes the label
    independent of the scan's matrix (a 0.5 mm and a 1 mm slice of the same head get comparable
    SSIM), makes it a function of the pixels the network sees, and bounds the simulation cost.
    """
    img = np.asarray(img, dtype=np.float32)
    fmask = np.asarray(mask, dtype=np.float32)
    grid = slices_to_square(img[None], (1.0, *zooms), 0, size)[0]
    grid_mask = slices_to_square(fmask[None], (1.0, *zooms), 0, size)[0] > 0.5
    extent = max(img.shape[0] * zooms[0], img.shape[1] * zooms[1])
    return np.clip(grid, 0.0, None).astype(np.float32), grid_mask, (extent / size, extent / size)


def rescale_head(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rescale so the head 99th percentile is 1 and clip to [0, 2] (the loader's normalisation)."""
    img = np.asarray(img, dtype=np.float32)
    ref = (
        float(np.percentile(img[mask], 99)) if mask.sum() >= 20 else float(np.percentile(img, 99.5))
    )
    if ref > 0:
        img = img / ref
    return np.clip(img, 0.0, 2.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _predictor(model, size: int | None):
    """A function (n, S, S) -> (n,) from a torch module or an :class:`SSIMScorer`, and its input size."""
    if hasattr(model, "predict_slices"):
        return model.predict_slices, int(model.config.input_size)
    import torch

    if size is None:
        raise ValueError("give the input size when evaluating a bare network")
    device = next(model.parameters()).device

    def predict(x: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(x), 128):
                out.append(
                    model(
                        torch.from_numpy(np.ascontiguousarray(x[s : s + 128]))[:, None].to(device)
                    )
                    .float()
                    .cpu()
                    .numpy()
                )
        model.train(was_training)
        return np.concatenate(out)

    return predict, int(size)


def make_eval_set(
    sources: list[SliceSource],
    sizes: tuple[int, ...],
    rng: np.random.Generator,
    n: int,
    cfg: SampleConfig = SampleConfig(),
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``n`` simulated slices (inputs per size, labels); sample ``i`` uses its own seed drawn from ``rng``."""
    maker = SSIMSampleMaker(sources, sizes, cfg)
    seeds = rng.integers(0, 2**63 - 1, size=n)
    xs: list[list[np.ndarray]] = [[] for _ in sizes]
    ys = np.empty(n, dtype=np.float32)
    for i, seed in enumerate(seeds):
        x, y = maker(np.random.default_rng(int(seed)))
        x = x if isinstance(x, tuple) else (x,)
        for j, arr in enumerate(x):
            xs[j].append(arr)
        ys[i] = y
    return tuple(np.stack(v) for v in xs), ys


def regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Residual statistics and class accuracies for predicted vs true SSIM.

    Residual = predicted - true (paper Sec. II). Its mean and population standard deviation are the
    parameters of the maximum-likelihood normal fit the paper reported (``scipy.stats.norm.fit``).
    Accuracies compare the classes of prediction and truth: equal bins (3, 5, 10) and the clinical
    scheme.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    res = pred - truth
    out: dict[str, Any] = {
        "n": int(len(res)),
        "residual_mean": float(res.mean()),
        "residual_sd": float(res.std()),
        "mae": float(np.abs(res).mean()),
        "rmse": float(np.sqrt((res**2).mean())),
        "residual_abs_p95": float(np.percentile(np.abs(res), 95)),
        "pearson_r": (
            float(np.corrcoef(pred, truth)[0, 1])
            if len(res) > 1 and truth.std() > 0 and pred.std() > 0
            else float("nan")
        ),
    }
    for n in BIN_COUNTS:
        tc = np.array([class_bins(v, n) for v in truth])
        pc = np.array([class_bins(v, n) for v in pred])
        out[f"accuracy_bins{n}"] = float((tc == pc).mean())
        out[f"support_bins{n}"] = {int(c): int((tc == c).sum()) for c in range(1, n + 1)}
    tc = np.array([class_clinical(v) for v in truth])
    pc = np.array([class_clinical(v) for v in pred])
    out["accuracy_clinical"] = float((tc == pc).mean())
    out["support_clinical"] = {c: int((tc == c).sum()) for c in ("good", "review", "rescan")}
    # residual spread by true-SSIM range, to show where the errors are
    bands = {}
    for lo, hi in ((0.0, 0.6), (0.6, 0.85), (0.85, 0.999999), (0.999999, 1.01)):
        sel = (truth >= lo) & (truth < hi)
        if sel.any():
            bands[f"[{lo:.2f},{min(hi, 1.0):.2f})" if hi < 1.01 else "1.0"] = {
                "n": int(sel.sum()),
                "mean": float(res[sel].mean()),
                "sd": float(res[sel].std()),
            }
    out["by_true_ssim"] = bands
    return out


def evaluate_ssim(
    model,
    volumes,
    rng: np.random.Generator,
    n: int = 2000,
    size: int | None = None,
    label_size: int | None = None,
    cfg: SampleConfig = SampleConfig(),
) -> dict[str, Any]:
    """Accuracy of a network or scorer on ``n`` fixed-seed simulated slices from ``volumes``.

    Parameters
    ----------
    model
        An :class:`bids_qa.models.ssim.SSIMScorer` or a bare network from
        :func:`bids_qa.models.ssim.build_resnet` (then ``size`` is its input size).
    volumes
        Clean :class:`~bids_qa.volume.Volume` objects or :class:`SliceSource` objects.
    rng
        Generator the per-sample seeds are drawn from (fixed seed -> fixed evaluation set).
    n
        Number of simulated slices (the paper used 10000).
    label_size
        Grid on which motion is simulated and SSIM measured (default: the model's input size). Give
        the main model's size to score a smaller-input model against the same labels.

    Returns
    -------
    dict
        :func:`regression_metrics` plus ``label_histogram`` (10 bins over [0, 1]), ``input_size`` and
        ``label_size``.
    """
    predict, size = _predictor(model, size)
    label_size = int(label_size or size)
    sizes = (label_size,) if label_size == size else (label_size, size)
    sources = [
        v if isinstance(v, SliceSource) else make_source(v, name=f"volume{i}", central_fraction=1.0)
        for i, v in enumerate(volumes)
    ]
    xs, y = make_eval_set(sources, sizes, rng, n, cfg)
    pred = predict(xs[-1])
    out = regression_metrics(pred, y)
    out["label_histogram"] = np.histogram(y, bins=10, range=(0, 1))[0].tolist()
    out["input_size"], out["label_size"] = size, label_size
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def dihedral_batch(x, k: int):
    """The batch (B, S, S) followed by its copies rotated by 90, 180, 270 degrees (first ``k`` of 4).

    SSIM is unchanged when both images are rotated together, and a rotated motion pattern is a valid
    motion pattern (the phase-encode axis is random anyway), so the labels carry over. Generating a
    sample costs ~20x more than a training pass over it on a CPU; reusing each sample in ``k``
    orientations ("batch augmentation", Hoffer et al. 2019) makes better use of every simulation.
    """
    import torch

    if not 1 <= k <= 4:
        raise ValueError(f"batch augmentation factor must be 1..4, got {k}")
    return torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(k)], 0)


def train(
    settings: loop.TrainSettings,
    train_sources: list[SliceSource],
    val_sources: list[SliceSource],
    config: SSIMConfig,
    argv: list[str] | None = None,
    val_size: int = 400,
    cfg: SampleConfig = SampleConfig(),
    batch_augment: int = 1,
    init: str | None = None,
    keep_validated: bool = False,
) -> dict:
    """Run (or resume) training; returns the best validation record. Writes only into run_dir.

    The best network (lowest validation MSE) is saved as ``best.safetensors``; with
    ``keep_validated`` every validated step is saved too (``step<N>.safetensors``). ``batch_augment``
    > 1 trains on every batch together with rotated copies (:func:`dihedral_batch`).
    """
    import torch

    from bids_qa.models.weights import save_weights

    run = loop.start_run(settings, NAME, argv, lambda: build_resnet(config), init)
    net, opt, sched, log = run.net, run.opt, run.sched, run.log
    best = run.extra.get("best", {"val_mse": 1e9})

    sizes = (config.input_size,)
    maker = SSIMSampleMaker(train_sources, sizes, cfg)
    t_val = time.time()
    # validation always uses the benchmark's sampling (no training-only nuisance noise, the
    # default share of clean samples)
    val_x, val_y = make_eval_set(
        val_sources,
        sizes,
        np.random.default_rng([settings.seed, 7919]),
        val_size,
        dataclasses.replace(cfg, p_noise=0.0, p_clean=P_CLEAN),
    )
    log.write(
        {
            "event": "validation_set",
            "n": int(val_size),
            "seconds": round(time.time() - t_val, 1),
            "label_histogram": np.histogram(val_y, bins=10, range=(0, 1))[0].tolist(),
        }
    )

    t0 = time.time()
    net.train()
    running: list[float] = []
    for step, (x, y) in loop.batches(maker, settings, run.start):
        y = y.to(settings.device).float().repeat(batch_augment)
        x = dihedral_batch(x.to(settings.device), batch_augment)
        loss = torch.nn.functional.mse_loss(net(x[:, None]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            log.write(
                {
                    "step": step + 1,
                    "loss": float(np.mean(running)),
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": round(time.time() - t0, 1),
                }
            )
            running = []
        last = step + 1 == settings.steps
        if (step + 1) % settings.validate_every == 0 or last:
            pred, _ = _predictor(net, config.input_size)
            metrics = regression_metrics(pred(val_x[0]), val_y)
            metrics["val_mse"] = metrics["rmse"] ** 2
            log.write(
                {
                    "step": step + 1,
                    "validation": {k: metrics[k] for k in ("val_mse", *REPORTED_METRICS)},
                }
            )
            record = {
                "val_mse": metrics["val_mse"],
                "step": step + 1,
                "residual_mean": metrics["residual_mean"],
                "residual_sd": metrics["residual_sd"],
            }
            is_best = record["val_mse"] < best["val_mse"]
            if is_best or keep_validated:
                meta = loop.weights_metadata(
                    NAME,
                    config,
                    run,
                    step + 1,
                    record,
                    sampling=cfg.to_dict(),
                    batch_augment=batch_augment,
                )
            if is_best:
                best = record
                save_weights(run.dir / "best.safetensors", net.state_dict(), meta)
            if keep_validated:
                save_weights(run.dir / f"step{step + 1}.safetensors", net.state_dict(), meta)
        if (step + 1) % settings.checkpoint_every == 0 or last:
            loop.save_checkpoint(run.dir, step + 1, net, opt, {"best": best})
    return {"best": best, "elapsed_s": round(time.time() - t0, 1)}


def sources_from_data(
    data_dir: str, split: str, n_synthetic: int, seed: int, mix=None
) -> list[SliceSource]:
    """Slice sources from the clean volumes of ``split`` (out-of-scope scans skipped) + synthetic ones."""
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    sources = [
        make_source(vol, name=str(entry.get("path", entry)), central_fraction=1.0)
        for entry, vol in clean_volumes(data_dir, split, mix=mix)
        if not entry.get("out_of_scope")
    ]
    if n_synthetic:
        rng = np.random.default_rng([seed, 104729 if split == "train" else 130363])
        sources += [
            make_source(vol, name=str(entry["path"]), central_fraction=1.0)
            for entry, vol in synthetic_volumes(n_synthetic, rng)
        ]
    return sources


def evaluate_run(
    run_dir: Path,
    sources: list[SliceSource],
    n: int,
    seed: int,
    label_size: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate ``best.safetensors`` of a run on ``n`` simulated slices of ``sources``, labels on
    the ``label_size`` grid; writes and returns ``evaluation.json``."""
    from bids_qa.models.ssim import SSIMScorer

    report: dict[str, Any] = {}
    for name in ("best",):
        path = run_dir / f"{name}.safetensors"
        if path.is_file():
            scorer = SSIMScorer(device=device, weights=str(path))
            report[name] = evaluate_ssim(
                scorer, sources, np.random.default_rng([seed, 424242]), n=n, label_size=label_size
            )
            report[name]["weights"] = path.name
            report[name]["version"] = scorer.version
    (run_dir / "evaluation.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def main(argv: list[str] | None = None) -> int:
    argv, args, settings = loop.parse_run(build_parser, argv)
    config = SSIMConfig(input_size=args.input_size, width=args.width)
    mix = synthetic_mix(settings)  # --synthetic-share / --label-maps (training/data.py)
    train_sources = sources_from_data(settings.data_dir, "train", args.synthetic, settings.seed, mix)
    val_sources = sources_from_data(settings.data_dir, "validation", 0, settings.seed, mix)
    if not val_sources:
        raise SystemExit("no validation volume found (split 'validation'); check --data")
    print(f"training on {len(train_sources)} volumes, validating on {len(val_sources)}", flush=True)
    result = train(
        settings,
        train_sources,
        val_sources,
        config,
        argv,
        val_size=args.val_size,
        batch_augment=args.batch_augment,
        cfg=SampleConfig(
            p_clean=args.p_clean, p_noise=args.p_noise, noise_max_std=args.noise_max_std
        ),
        init=args.init,
        keep_validated=args.keep_validated,
    )
    print(json.dumps(result, indent=2))
    if args.evaluate:
        report = evaluate_run(
            Path(settings.run_dir),
            val_sources,
            args.evaluate,
            settings.seed,
            config.input_size,
            settings.device,
        )
        print(
            json.dumps(
                {k: {m: v[m] for m in REPORTED_METRICS} for k, v in report.items()},
                indent=2,
            )
        )
    loop.export_weights(Path(settings.run_dir) / "best.safetensors", args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
