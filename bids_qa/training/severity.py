"""Train the severity model (Hays et al.) on clean volumes corrupted on the fly.

Each sample is a quadruplet drawn from ``default_rng([seed, i])``: an anchor (clean slice), a
positive (another clean slice, from another volume), and two negatives: the anchor corrupted with
the same artifact (or combination) at two severities SS1, SS2 in [0, 1].

Loss (Hays et al. Sec. 2.5, with three documented additions):
- paper: L2 between anchor and positive scores, and a triplet loss whose margin is the negative's
  severity, ``relu(|s_a - s_p| - |s_a - s_n| + K*SS)``; we scale the margin by ``K`` (default 3) so the
  paper's threshold of 1 sits near SS = 1/3 and SS >= 0.5 lands clearly above it;
- ours: a small pull of clean scores towards 0 (the paper's scores float freely; ours should read as
  "0 = clean");
- ours: a ranking hinge between the two negatives, ``relu(K*(SS_hi - SS_lo) - (s_hi - s_lo))``, which
  makes the score monotone in severity *within* an artifact (the paper's bias row barely moved);
- ours: a soft ceiling ``relu(s_n - K*SS - 1)`` so the scale stays interpretable (score ~ K * SS).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bids_qa.artifacts import SEVERITY_ARTIFACTS as ARTIFACT_NAMES
from bids_qa.models.severity import NAME, SeverityConfig, build_encoder
from bids_qa.preprocess import renormalise, to_model_input
from bids_qa.training import loop
from bids_qa.training.data import synthetic_mix
from bids_qa.training.slices import (
    SliceSource,
    augment_geometry,
    draw_slice,
    make_source,
)

MARGIN_SCALE = 3.0
COMBINATION_PROBABILITY = 0.2
CLEAN_PULL = 0.1


@dataclass(frozen=True)
class Recipe:
    """Where the loss and sampling may deviate from Hays et al.'s recipe (the defaults: theirs,
    drawing exactly the samples earlier runs drew; the shipped weights' values are in their
    metadata). ``damage_margins`` (on by default for new trainings; off for the shipped
    weights) labels the negatives with the damage-based SS of :mod:`bids_qa.damage` instead of
    their parameter SS: same images, margins that follow the damage visible on the slice."""

    #: see :func:`severity_loss`
    positive_weight: float = 1.0
    #: see :class:`QuadrupletMaker`
    benign_blur_mm: float = 0.0
    #: weight of the pull of clean scores towards 0 (see :func:`severity_loss`)
    clean_pull: float = CLEAN_PULL
    #: margins from the damage-based SS (bids_qa.damage) instead of the parameter SS
    damage_margins: bool = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa train severity", description=__doc__.splitlines()[0])
    loop.add_common_arguments(p, steps=6000, batch_size=24, lr=1e-3)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument(
        "--pixel-mm",
        type=float,
        default=0.0,
        help="read slices at this fixed pixel spacing, cut around the head (0: whole field of "
        "view resized to the input size)",
    )
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32])
    p.add_argument(
        "--positive-weight",
        type=float,
        default=1.0,
        help="weight of the anchor-positive terms (L2 and |s_a - s_p| in the triplet); 1 = paper",
    )
    p.add_argument(
        "--benign-blur",
        type=float,
        default=0.0,
        metavar="MM",
        help="isotropic blur up to this sigma (mm) on half of the clean anchors and positives",
    )
    p.add_argument(
        "--clean-pull",
        type=float,
        default=CLEAN_PULL,
        help=f"weight of the pull of clean scores towards 0 (default {CLEAN_PULL})",
    )
    p.add_argument(
        "--parameter-margins",
        action="store_true",
        help="triplet margins from the parameter SS (the shipped weights' recipe) instead of the "
        "damage-based SS of bids_qa.damage",
    )
    p.add_argument(
        "--synthetic", type=int, default=6, help="synthetic MNI-derived volumes added to training"
    )
    p.add_argument(
        "--artifact-weights",
        type=float,
        nargs=len(ARTIFACT_NAMES),
        default=None,
        metavar="W",
        help="relative sampling weights of single-artifact negatives, in the order "
        + " ".join(ARTIFACT_NAMES)
        + " (default: uniform)",
    )
    return p


class QuadrupletMaker:
    """Picklable sample factory (runs in loader workers)."""

    def __init__(
        self,
        sources: list[SliceSource],
        size: int,
        artifact_weights: tuple[float, ...] | None = None,
        benign_blur_mm: float = 0.0,
        pixel_mm: float = 0.0,
        damage_margins: bool = False,
    ) -> None:
        self.sources = sources
        #: label the negatives with the damage-based SS (see :class:`Recipe`)
        self.damage_margins = bool(damage_margins)
        self.size = size
        #: see :class:`SeverityConfig` (``pixel_mm``)
        self.pixel_mm = float(pixel_mm)
        #: Isotropic Gaussian blur (sigma up to this many mm, half of the samples) applied to the
        #: clean anchor before corruption and, independently, to the positive: natural softness
        #: varies between scanners, and shown as benign it leaves *directional* blur (anisotropy)
        #: as the thing to score. 0 draws nothing (the random stream of earlier runs).
        self.benign_blur_mm = float(benign_blur_mm)
        w = (
            np.ones(len(ARTIFACT_NAMES))
            if artifact_weights is None
            else np.asarray(artifact_weights)
        )
        if w.shape != (len(ARTIFACT_NAMES),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"artifact weights must be {len(ARTIFACT_NAMES)} non-negative numbers")
        self.artifact_p = w / w.sum()

    def _benign_blur(self, img: np.ndarray, zooms, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        if rng.random() >= 0.5:
            return img
        sigma_mm = float(rng.uniform(0.0, self.benign_blur_mm))
        return gaussian_filter(img, [sigma_mm / z for z in zooms]).astype(np.float32)

    def __call__(self, rng: np.random.Generator):
        from bids_qa import artifacts

        k, img, mask, zooms = draw_slice(self.sources, rng)
        img, mask, zooms = augment_geometry(img, mask, zooms, rng)
        if rng.random() < 0.5:  # mild contrast diversity, shared by anchor and negatives
            img = np.clip(img, 0, None) ** float(np.exp(rng.uniform(-0.3, 0.3)))
        # the positive: a clean slice of *another* volume, so the anchor-positive terms ask for
        # invariance to everything that differs between scanners
        _, pos, pmask, pzooms = draw_slice(self.sources, rng, exclude=k)
        if self.benign_blur_mm > 0:
            img = self._benign_blur(img, zooms, rng)
            pos = self._benign_blur(pos, pzooms, rng)
        if rng.random() < COMBINATION_PROBABILITY:
            n_art = int(rng.integers(2, 4))
            arts = list(rng.choice(artifacts.SEVERITY_ARTIFACTS, size=n_art, replace=False))
            negs = [artifacts.simulate_combination(img, arts, rng, zooms=zooms) for _ in range(2)]
        else:
            art = str(rng.choice(ARTIFACT_NAMES, p=self.artifact_p))
            negs = [
                artifacts.simulate(img, art, rng, severity=float(rng.uniform(0, 1)), zooms=zooms)
                for _ in range(2)
            ]
        px = self.pixel_mm
        out = [
            to_model_input(img, zooms, self.size, mask, px),
            to_model_input(pos, pzooms, self.size, pmask, px),
        ]
        for neg, _label in negs:
            out.append(to_model_input(renormalise(neg, img, mask), zooms, self.size, mask, px))
        if self.damage_margins:
            from bids_qa.damage import damage_label

            ss = np.array(
                [damage_label(lab.artifact, img, neg, mask)[1] for neg, lab in negs],
                dtype=np.float32,
            )
        else:
            ss = np.array([negs[0][1].severity, negs[1][1].severity], dtype=np.float32)
        return np.stack(out).astype(np.float32), ss


def severity_loss(
    scores,
    ss,
    margin_scale: float = MARGIN_SCALE,
    positive_weight: float = 1.0,
    clean_pull: float = CLEAN_PULL,
):
    """Loss for a batch of scores (B, 4) = [anchor, positive, neg1, neg2] and severities (B, 2).

    ``positive_weight`` scales the two terms that compare the anchor with the positive (by default a
    clean slice of another volume): the L2 term and ``|s_a - s_p|`` in the triplet. They ask the
    score to ignore whatever differs between clean volumes, which includes sharpness and intensity
    inhomogeneity, the very properties anisotropy and bias change (docs/models/history.md).
    """
    import torch

    relu = torch.nn.functional.relu
    sa, sp, sn = scores[:, 0], scores[:, 1], scores[:, 2:]
    d_ap = positive_weight * (sa - sp).abs()
    l2 = positive_weight * (sa - sp) ** 2
    d_an = (sa[:, None] - sn).abs()
    triplet = relu(d_ap[:, None] - d_an + margin_scale * ss).mean(1)
    pull = clean_pull * (sa**2 + sp**2)
    hi = (ss[:, 0] >= ss[:, 1]).float()
    gap = (sn[:, 0] - sn[:, 1]) * (2 * hi - 1)
    rank = relu(margin_scale * (ss[:, 0] - ss[:, 1]).abs() - gap)
    ceiling = relu(sn - margin_scale * ss - 1.0).mean(1)
    parts = {
        "l2": l2.mean(),
        "triplet": triplet.mean(),
        "pull": pull.mean(),
        "rank": rank.mean(),
        "ceiling": ceiling.mean(),
    }
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def validation_metrics(net, batch: tuple[np.ndarray, np.ndarray], device: str) -> dict[str, float]:
    """Slice-level checks on a fixed validation batch: clean scores and rank correlation with SS."""
    import torch

    from bids_qa.metrics import spearman

    x, ss = batch
    with torch.inference_mode():
        s = (
            net(torch.from_numpy(x.reshape(-1, 1, *x.shape[-2:])).to(device))
            .cpu()
            .numpy()
            .reshape(len(x), 4)
        )
    clean = s[:, :2].ravel()
    sev = np.concatenate([np.zeros(len(x)), ss.ravel()])
    val = np.concatenate([s[:, 0], s[:, 2:].ravel()])
    rho = spearman(sev, val)
    hi = s[:, 2:][ss >= 0.5]
    return {
        "clean_mean": float(clean.mean()),
        "clean_le1": float((clean <= 1).mean()),
        "ss05_gt1": float((hi > 1).mean()) if hi.size else float("nan"),
        "spearman": rho,
    }


def train(
    settings: loop.TrainSettings,
    train_sources: list[SliceSource],
    val_sources: list[SliceSource],
    config: SeverityConfig,
    argv: list[str] | None = None,
    val_size: int = 96,
    init: str | None = None,
    artifact_weights: tuple[float, ...] | None = None,
    recipe: Recipe = Recipe(),
) -> dict:
    """Run (or resume) training; returns the best validation record. Writes only into run_dir."""
    from bids_qa.models.weights import save_weights

    # the encoder is fully convolutional: warm-start weights of any input size fit
    run = loop.start_run(settings, NAME, argv, lambda: build_encoder(config), init)
    net, opt, sched, log = run.net, run.opt, run.sched, run.log
    best = run.extra.get("best", {"objective": -1e9})

    maker = QuadrupletMaker(
        train_sources,
        config.input_size,
        artifact_weights,
        recipe.benign_blur_mm,
        config.pixel_mm,
        recipe.damage_margins,
    )
    val_maker = QuadrupletMaker(
        val_sources, config.input_size, pixel_mm=config.pixel_mm, damage_margins=recipe.damage_margins
    )
    val_items = [
        val_maker(np.random.default_rng([settings.seed + 7919, i])) for i in range(val_size)
    ]
    val_batch = (np.stack([v[0] for v in val_items]), np.stack([v[1] for v in val_items]))

    t0 = time.time()
    net.train()
    for step, (x, ss) in loop.batches(maker, settings, run.start):
        x = x.to(settings.device)
        ss = ss.to(settings.device)
        scores = net(x.reshape(-1, 1, *x.shape[-2:])).reshape(x.shape[0], 4)
        loss, parts = severity_loss(
            scores,
            ss,
            positive_weight=recipe.positive_weight,
            clean_pull=recipe.clean_pull,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            log.write(
                {
                    "step": step,
                    "loss": float(loss.detach()),
                    **parts,
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": round(time.time() - t0, 1),
                }
            )
        last = step + 1 == settings.steps
        if (step + 1) % settings.validate_every == 0 or last:
            net.eval()
            metrics = validation_metrics(net, val_batch, settings.device)
            net.train()
            # rank agreement plus separation at the threshold, minus clean-scan penalties (the
            # rank term alone favoured early, under-trained steps in our first run)
            objective = (
                metrics["spearman"]
                + metrics["ss05_gt1"]
                - max(0.0, metrics["clean_mean"] - 0.3)
                - (1 - metrics["clean_le1"])
            )
            log.write({"step": step + 1, "validation": metrics, "objective": objective})
            if objective > best["objective"]:
                best = {"objective": objective, "step": step + 1, "metrics": metrics}
                meta = loop.weights_metadata(
                    NAME,
                    config,
                    run,
                    step + 1,
                    metrics,
                    margin_scale=MARGIN_SCALE,
                    artifact_weights=list(artifact_weights) if artifact_weights else None,
                    recipe=asdict(recipe),
                )
                save_weights(run.dir / "best.safetensors", net.state_dict(), meta)
        if (step + 1) % settings.checkpoint_every == 0 or last:
            loop.save_checkpoint(run.dir, step + 1, net, opt, {"best": best})
    return best


def sources_from_data(data_dir: str, split: str, n_synthetic: int, seed: int, mix=None) -> list[SliceSource]:
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    sources = [
        make_source(vol, name=str(entry.get("path", entry)))
        for entry, vol in clean_volumes(data_dir, split, mix=mix)
        if not entry.get("out_of_scope")
    ]
    if n_synthetic:
        rng = np.random.default_rng([seed, 104729 if split == "train" else 130363])
        sources += [make_source(v, name=e["path"]) for e, v in synthetic_volumes(n_synthetic, rng)]
    return sources


def main(argv: list[str] | None = None) -> int:
    argv, args, settings = loop.parse_run(build_parser, argv)
    config = SeverityConfig(
        input_size=args.input_size,
        channels=tuple(args.channels),
        pixel_mm=args.pixel_mm,
    )
    mix = synthetic_mix(settings)  # --synthetic-share / --label-maps (training/data.py)
    train_sources = sources_from_data(settings.data_dir, "train", args.synthetic, settings.seed, mix)
    val_sources = sources_from_data(settings.data_dir, "validation", 0, settings.seed, mix)
    print(f"training on {len(train_sources)} volumes, validating on {len(val_sources)}", flush=True)
    best = train(
        settings,
        train_sources,
        val_sources,
        config,
        argv,
        init=args.init,
        artifact_weights=tuple(args.artifact_weights) if args.artifact_weights else None,
        recipe=Recipe(
            positive_weight=args.positive_weight,
            benign_blur_mm=args.benign_blur,
            clean_pull=args.clean_pull,
            damage_margins=not args.parameter_margins,
        ),
    )
    print(json.dumps(best, indent=2))
    loop.export_weights(Path(settings.run_dir) / "best.safetensors", args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
