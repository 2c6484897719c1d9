"""Train the flow-density model (Zuo et al.): contrastive artifact encoder, then a reference flow.

Stage 1, encoder E (Eq. 1, InfoNCE with dot-product similarity). Each sample drawn from
``default_rng([seed, i])`` holds a query slice ``x*``, a positive ``x+`` and ``K`` simulated
negatives:

- the query is a slice of a clean training volume, corrupted (probability ``--corrupt-prob``) with
  one simulated artifact at a random severity, or left clean;
- the positive has the *same artifact level*: another slice of the same volume carrying the same
  artifact with the same parameters. Deviation from the paper (which takes the same position in
  another orientation of a 1 mm isotropic volume): our clinical 2D volumes are thick-slice (3-4.4 mm)
  and blurry across the acquisition plane by design, so their positives are other slices of the
  acquisition plane; isotropic 3D volumes draw the positive from any of the three planes, as the
  paper does;
- negatives: the query's clean slice with a *different* artifact or a severity at least 0.3 away
  (the paper simulates noise and motion; we add ghosting and bias from the same simulator, see the
  model card), and, as in the paper, slices of *other volumes*: the other samples of the batch
  (samples drawn from the same volume are masked out).

Loss per query, symmetrised over (query, positive):
``-log[exp(m*.m+) / (exp(m*.m+) + mean_neg exp(m*.m-))]`` where the mean over negatives gives the
simulated negatives and the other-volume negatives equal weight (the batch holds ~20x more of the
latter, which would otherwise drown the artifact signal), plus ``1e-3 * |m|^2`` so the embedding
does not grow without bound (Eq. 1 keeps decreasing as the norms grow).

Stage 2, reference flow (Eq. 2): with the best encoder (lowest validation loss), the volume ``m``
(mean over the 20 centre slices) of every clean training volume, under a few benign variants
(left-right flip, gamma 0.8 / 1.25, centre window shifted by +-4 slices), is the reference population;
a RealNVP is fitted to it by maximum likelihood (:func:`bids_qa.models.flow.fit_flow`) and shipped in
the same safetensors file as the encoder, with the population's densities.

Stage 3 (``--evaluate``): :func:`evaluate_flow` on the validation volumes, written to
``eval.json`` and ``m_plane.png`` in the run folder and into the weights' metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bids_qa.models.flow import (
    NAME,
    EncoderConfig,
    FitConfig,
    FlowConfig,
    build_encoder,
    config_metadata,
    encode_slices,
    fit_flow,
)
from bids_qa.training import loop
from bids_qa.training.data import synthetic_mix
from bids_qa.training.slices import (
    SliceSource,
    augment_geometry,
    make_source,
    native_slice,
    renormalise,
    to_model_input,
)

#: Artifacts used for simulated negatives (paper: noise and motion; we add ghosting, bias and a
#: field-of-view truncation, see the model card). ``truncation`` is simulated here
#: (:func:`truncate_slice`), the others by :mod:`bids_qa.artifacts`.
NEGATIVE_ARTIFACTS = ("noise", "motion", "ghosting", "bias", "truncation")
#: Weight of the norm penalty.
NORM_PENALTY = 1e-3
#: Minimum severity gap between the query and a same-artifact negative.
SEVERITY_GAP = 0.3
#: Variants of every reference volume: (left-right flip, gamma) x centre-window shifts.
REFERENCE_VARIANTS = ((False, 1.0), (True, 1.0), (False, 0.8), (False, 1.25))
REFERENCE_SHIFTS = (0, -4, 4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa train flow", description=__doc__.splitlines()[0])
    loop.add_common_arguments(p, steps=1200, batch_size=24, lr=1e-3)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--channels", type=int, nargs=3, default=[8, 16, 32])
    p.add_argument("--negatives", type=int, default=3, help="simulated negatives per query")
    p.add_argument("--corrupt-prob", type=float, default=0.5, help="probability that a query is corrupted")
    p.add_argument("--artifacts", nargs="+", default=list(NEGATIVE_ARTIFACTS), help="artifacts simulated for negatives")
    p.add_argument("--output-scale", type=float, default=EncoderConfig().output_scale,
                   help="fixed factor on the encoder output (an inverse square-root temperature)")
    p.add_argument("--synthetic", type=int, default=None,
                   help="synthetic MNI-derived volumes added to training and reference (default 6; 0 with --reference-only)")
    p.add_argument("--flow-steps", type=int, default=FitConfig().steps, help="Adam steps of the reference flow fit")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the validation split at the end")
    p.add_argument("--mask-same-level", action="store_true",
                   help="drop other-volume negatives at the query's own artifact level (see contrastive_loss)")
    p.add_argument("--both-motion-models", action="store_true",
                   help="simulate motion with TorchIO's model as well as our k-space one (50/50)")
    p.add_argument("--reference-only", action="store_true",
                   help="keep the encoder of --init, refit only the reference density (training/flow_reference.py)")
    p.add_argument("--resolutions", nargs="*", default=["iso1.5", "iso2.5", "thick4"],
                   help="with --reference-only: resolution variants of every reference volume")
    p.add_argument("--exclude-folder", nargs="*", default=[],
                   help="leave these manifest folders out of training (encoder and reference) or, with "
                        "--reference-only, out of the reference: a leave-one-site-out run")
    return p


# --------------------------------------------------------------------------------------------
# samples and loss


class ContrastiveMaker:
    """Picklable sample factory: (stack (2+K, S, S) float32, source index) from one rng."""

    def __init__(self, sources: list[SliceSource], size: int, artifacts: tuple[str, ...], n_neg: int,
                 corrupt_prob: float, both_motion_models: bool = False) -> None:
        self.sources, self.size, self.artifacts = sources, size, tuple(artifacts)
        self.n_neg, self.corrupt_prob = n_neg, corrupt_prob
        self.both_motion_models = both_motion_models
    def _corrupt(self, img, mask, zooms, art, params):
        from bids_qa import artifacts

        if art == "truncation":
            return truncate_slice(img, mask, params)
        return renormalise(artifacts.apply_artifact(img, art, params, zooms=zooms), img, mask)

    def _params(self, art: str, rng: np.random.Generator, severity: float) -> dict:
        from bids_qa import artifacts
        from bids_qa.training import augment

        if art == "truncation":
            return truncation_params(rng, severity)
        params = artifacts.sample_params(art, rng, severity=severity)
        if art == "motion" and self.both_motion_models:  # TorchIO's motion as well as our k-space one
            params["model"] = augment.SLICE_MOTION_MODELS[int(rng.integers(2))]
        return params

    def _to_work(self, img, mask, zooms):
        """Square field of view at the working resolution (at most twice the model size).

        Artifacts are simulated here rather than at native resolution (up to 448 px): 3-4x cheaper,
        and the final 2x antialiased downsampling to the model size still averages pixel-level noise
        the way the scorer's own resampling of a native scan does.
        """
        h, w = img.shape
        work = int(min(2 * self.size, max(h, w)))
        extent = max(h * zooms[0], w * zooms[1])
        img2 = to_model_input(img, zooms, work)
        mask2 = to_model_input(mask.astype(np.float32), zooms, work) > 0.5
        return img2, mask2, (extent / work, extent / work)

    def __call__(self, rng: np.random.Generator):

        k = int(rng.integers(len(self.sources)))
        src = self.sources[k]
        picks = rng.choice(len(src.choices), size=2, replace=len(src.choices) < 2)
        q, qmask, qz = native_slice(src, *src.choices[int(picks[0])])
        p, pmask, pz = native_slice(src, *src.choices[int(picks[1])])
        gamma = 1.0
        if rng.random() < 0.5:  # contrast diversity, a property of the volume: shared by q and p
            gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
            q, p = np.clip(q, 0, None) ** gamma, np.clip(p, 0, None) ** gamma
        q, qmask, qz = augment_geometry(q, qmask, qz, rng)
        p, pmask, pz = augment_geometry(p, pmask, pz, rng)
        q, qmask, qz = self._to_work(q, qmask, qz)
        p, pmask, pz = self._to_work(p, pmask, pz)
        clean_q = q
        art, sev = None, 0.0
        if rng.random() < self.corrupt_prob:
            art = str(rng.choice(self.artifacts))
            sev = float(rng.uniform(0.15, 1.0))
            params = self._params(art, rng, sev)
            q = self._corrupt(clean_q, qmask, qz, art, params)
            if "seed" in params:  # same level, fresh noise realisation (no pattern to match)
                params = {**params, "seed": int(rng.integers(0, 2**31 - 1))}
            p = self._corrupt(p, pmask, pz, art, params)
        def final(x, zooms, mask):
            return to_model_input(x, zooms, self.size, mask)

        out = [final(q, qz, qmask), final(p, pz, pmask)]
        for j in range(self.n_neg):
            if art is not None and sev >= SEVERITY_GAP and j == 0:
                neg = clean_q  # clean vs corrupted: different artifact level
            else:
                while True:
                    art2 = str(rng.choice(self.artifacts))
                    sev2 = float(rng.uniform(0.25, 1.0))
                    if art is None or art2 != art or abs(sev2 - sev) >= SEVERITY_GAP:
                        break
                neg = self._corrupt(clean_q, qmask, qz, art2, self._params(art2, rng, sev2))
            out.append(final(neg, qz, qmask))
        # the query's artifact level: -1 clean, else the artifact's index, and its severity
        level = np.array([-1 if art is None else self.artifacts.index(art), sev], dtype=np.float32)
        return np.stack(out).astype(np.float32), k, level


def truncation_params(rng: np.random.Generator, severity: float) -> dict:
    """A field-of-view truncation of a slice: ``fraction`` 0.15-0.6 of the head removed from one side."""
    return {"axis": int(rng.integers(2)), "side": int(rng.integers(2)), "fraction": 0.15 + 0.45 * float(severity)}


def truncate_slice(img: np.ndarray, mask: np.ndarray, params: dict) -> np.ndarray:
    """Zero ``fraction`` of the head's extent along ``axis`` from one ``side`` (slice-level version of
    a truncated field of view / one side of the head missing)."""
    axis, side, frac = int(params["axis"]), int(params["side"]), float(params["fraction"])
    cover = np.flatnonzero(mask.any(axis=1 - axis))
    if len(cover) == 0:
        return img.copy()
    lo, hi = int(cover[0]), int(cover[-1]) + 1
    cut = int(round(lo + frac * (hi - lo))) if side == 0 else int(round(hi - frac * (hi - lo)))
    out = img.copy()
    sl = [slice(None), slice(None)]
    sl[axis] = slice(0, cut) if side == 0 else slice(cut, None)
    out[tuple(sl)] = 0.0
    return out


def contrastive_loss(m, source, level=None):
    """Eq. 1 for a batch of embeddings ``m`` (B, 2+K, 2) = [query, positive, K negatives].

    ``level`` (B, 2) = (artifact index or -1 for clean, severity), when given, removes from the
    other-volume negatives every pair at the same artifact level (both clean, or the same artifact
    within :data:`SEVERITY_GAP`): with a few dozen clean volumes, pushing clean scans of different
    sites apart spreads the clean population over the m-plane, and moderate artifacts then stay
    inside its density (the first shipped encoder's main failure).

    Returns (loss, parts) where parts holds the InfoNCE term, the norm penalty and the fraction of
    queries whose positive is more similar than every negative (``acc``).
    """
    import torch

    b = m.shape[0]
    q, p, neg = m[:, 0], m[:, 1], m[:, 2:]
    others = m[:, :2].reshape(2 * b, 2)
    other_src = source.repeat_interleave(2)
    same = source[:, None] == other_src[None, :]  # (B, 2B): same volume -> not a negative
    if level is not None:
        art, sev = level[:, 0], level[:, 1]
        o_art, o_sev = art.repeat_interleave(2), sev.repeat_interleave(2)
        same_level = (art[:, None] == o_art[None, :]) & (
            (art[:, None] < 0) | ((sev[:, None] - o_sev[None, :]).abs() < SEVERITY_GAP)
        )
        same = same | same_level

    def one_side(a, pos):
        s_pos = (a * pos).sum(-1)
        s_sim = (a[:, None, :] * neg).sum(-1)  # (B, K)
        s_bat = (a @ others.T).masked_fill(same, float("-inf"))  # (B, 2B)
        n_bat = (~same).sum(1).clamp(min=1)
        lse_sim = torch.logsumexp(s_sim, 1) - np.log(neg.shape[1])
        lse_bat = torch.logsumexp(s_bat, 1) - torch.log(n_bat.to(m.dtype))
        has_bat = (~same).any(1)
        lse_neg = torch.where(has_bat, torch.logaddexp(lse_sim, lse_bat) - np.log(2.0), lse_sim)
        nce = -(s_pos - torch.logaddexp(s_pos, lse_neg))
        best_neg = torch.maximum(s_sim.max(1).values, s_bat.max(1).values)
        return nce, (s_pos > best_neg).float()

    nce1, acc1 = one_side(q, p)
    nce2, acc2 = one_side(p, q)
    nce = 0.5 * (nce1 + nce2).mean()
    norm = NORM_PENALTY * (m**2).sum(-1).mean()
    return nce + norm, {"nce": float(nce.detach()), "norm": float(norm.detach()),
                        "acc": float(0.5 * (acc1 + acc2).mean())}


def validation_metrics(net, batch, device: str) -> dict[str, float]:
    """InfoNCE loss and top-1 accuracy on a fixed validation batch."""
    import torch

    x, src, level = batch
    with torch.inference_mode():
        m = net(torch.from_numpy(x.reshape(-1, 1, *x.shape[-2:])).to(device)).reshape(x.shape[0], x.shape[1], 2)
        loss, parts = contrastive_loss(m.cpu(), torch.from_numpy(src),
                                       torch.from_numpy(level) if level is not None else None)
    return {"loss": float(loss), **parts, "m_norm": float(m.norm(dim=-1).mean())}


# --------------------------------------------------------------------------------------------
# stage 1: encoder


def train_encoder(settings: loop.TrainSettings, maker: ContrastiveMaker, val_maker: ContrastiveMaker,
                  config: EncoderConfig, argv: list[str], val_size: int = 48,
                  mask_same_level: bool = False, init: str | None = None) -> dict:
    """Run (or resume) contrastive training; the best encoder goes to ``best_encoder.safetensors``."""
    from bids_qa.models.weights import save_weights

    run = loop.start_run(settings, NAME, argv, lambda: build_encoder(config), init, weight_decay=1e-5)
    net, opt, sched, log, extra = run.net, run.opt, run.sched, run.log, run.extra
    run_dir = run.dir
    best = extra.get("best", {"objective": -1e9})
    val_items = [val_maker(np.random.default_rng([settings.seed + 7919, i])) for i in range(val_size)]
    val_batch = (np.stack([v[0] for v in val_items]), np.array([v[1] for v in val_items]),
                 np.stack([v[2] for v in val_items]) if mask_same_level else None)

    t0 = time.time()
    elapsed_before = float(extra.get("train_seconds", 0.0))
    net.train()
    for step, (x, src, level) in loop.batches(maker, settings, run.start):
        x = x.to(settings.device)
        m = net(x.reshape(-1, 1, *x.shape[-2:])).reshape(x.shape[0], x.shape[1], 2)
        loss, parts = contrastive_loss(m, src.to(settings.device),
                                       level.to(settings.device) if mask_same_level else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            log.write({"step": step, "loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0],
                       "elapsed_s": round(elapsed_before + time.time() - t0, 1)})
        last = step + 1 == settings.steps
        if (step + 1) % settings.validate_every == 0 or last:
            net.eval()
            metrics = validation_metrics(net, val_batch, settings.device)
            net.train()
            objective = -metrics["loss"]
            log.write({"step": step + 1, "validation": metrics, "objective": objective})
            print(f"step {step + 1}: validation {json.dumps(metrics)}", flush=True)
            if objective > best["objective"]:
                best = {"objective": objective, "step": step + 1, "metrics": metrics}
                save_weights(run_dir / "best_encoder.safetensors", net.state_dict(), {"step": step + 1})
        if (step + 1) % settings.checkpoint_every == 0 or last:
            loop.save_checkpoint(run_dir, step + 1, net, opt,
                                 {"best": best, "train_seconds": elapsed_before + time.time() - t0})
    best["train_seconds"] = round(elapsed_before + time.time() - t0, 1)
    return best


# --------------------------------------------------------------------------------------------
# stage 2: reference population and flow


def reference_population(
    net, volumes, size: int, device: str = "cpu"
) -> tuple[np.ndarray, list[str]]:
    """Volume ``m`` of every clean reference volume under :data:`REFERENCE_VARIANTS` x shifts.

    Returns (m (n, 2), names). Variants are applied to the model-size slice stack (cheap) rather than
    to the native volume.
    """
    from bids_qa.models.flow import centre_slices

    ms: list[np.ndarray] = []
    names: list[str] = []
    for name, vol in volumes:
        stack = vol.slice_stack(size)
        anatomy = vol.anatomy_slices()
        if len(anatomy) == 0:
            anatomy = np.arange(len(stack))
        for flip, gamma in REFERENCE_VARIANTS:
            for shift in REFERENCE_SHIFTS:
                lo = max(0, min(len(anatomy) - 1, (len(anatomy) - 20) // 2 + shift))
                idx = centre_slices(anatomy) if shift == 0 else anatomy[lo : lo + 20]
                sl = stack[idx]
                if flip:
                    sl = sl[:, :, ::-1]
                if gamma != 1.0:
                    sl = np.clip(sl, 0, None) ** gamma
                ms.append(encode_slices(net, sl, device=device).astype(np.float64).mean(0))
                names.append(f"{name}|flip={int(flip)}|gamma={gamma}|shift={shift}")
    return np.array(ms), names


def build_weights(net, encoder_config: EncoderConfig, flow_config: FlowConfig, fit: FitConfig, ref_m: np.ndarray,
                  ref_names: list[str], extra_meta: dict) -> tuple[dict, dict, object]:
    """Fit the reference flow and assemble (state_dict, metadata, fitted flow) for one weights file."""
    from bids_qa import __version__

    t0 = time.time()
    fitted = fit_flow(ref_m, flow_config, fit)
    fit_seconds = time.time() - t0
    state = {f"encoder.{k}": v for k, v in net.state_dict().items()}
    state.update(fitted.state_dict("reference."))
    meta = {"family": NAME, "version": f"{__version__}+{extra_meta.get('tag', 'dev')}",
            **config_metadata(encoder_config, flow_config, fit),
            "reference": {"n_points": int(len(ref_m)), "n_volumes": len({n.split('|')[0] for n in ref_names}),
                          "variants": [list(v) for v in REFERENCE_VARIANTS], "shifts": list(REFERENCE_SHIFTS),
                          "level_5pct": fitted.level(5.0), "level_3pct": fitted.level(3.0),
                          "fit_seconds": round(fit_seconds, 2), "volumes": sorted({n.split('|')[0] for n in ref_names})},
            **{k: v for k, v in extra_meta.items() if k != "tag"}}
    return state, meta, fitted


# --------------------------------------------------------------------------------------------
# stage 3: evaluation


#: Categories of the evaluation and whether they count as artifact-laden.
EVAL_ARTIFACTS = ("noise", "motion", "ghosting", "bias")


def _rebuild(data: np.ndarray, zooms) -> object:
    from bids_qa.volume import volume_from_array

    return volume_from_array(np.ascontiguousarray(data, dtype=np.float32), tuple(zooms))


def truncate_half(volume, axis: int = 0, crop: bool = False) -> np.ndarray:
    """The volume with one half of the head (along ``axis``, split at the head's centre) zeroed or
    cropped away: a truncated field of view (Zuo et al. Fig. 3 G, "one side of the head removed")."""
    data = volume.data
    other = tuple(a for a in range(3) if a != axis)
    cover = np.flatnonzero(volume.mask.any(axis=other))
    mid = int((cover[0] + cover[-1]) // 2) if len(cover) else data.shape[axis] // 2
    if crop:
        return np.ascontiguousarray(np.take(data, np.arange(mid, data.shape[axis]), axis=axis))
    out = data.copy()
    sl = [slice(None)] * 3
    sl[axis] = slice(0, mid)
    out[tuple(sl)] = 0.0
    return out


def evaluation_cases(volumes, rng: np.random.Generator, n_clean_variants: int = 3,
                     severity: tuple[float, float] = (0.7, 1.0)):
    """Yield (name, category, is_artifact, Volume, change) for the evaluation (built lazily, one at
    a time); ``change`` is the simulated artifact's realised change
    (:func:`bids_qa.similarity.realised_change`, against the clean volume), None for other cases.

    Per in-scope validation volume: the volume itself and ``n_clean_variants`` benign variants
    (flips and gamma in [0.8, 1.25], counted as clean); each of :data:`EVAL_ARTIFACTS` at a severity
    drawn in ``severity`` applied to the whole volume at native resolution; a truncated field of view
    (left half zeroed) and a cropped one (anterior half cut away). Out-of-scope volumes (spine) are
    artifact-laden cases of category ``non_brain``.
    """
    from bids_qa import artifacts, similarity

    for entry, vol in volumes:
        name = Path(str(entry.get("path", "volume"))).name
        if entry.get("out_of_scope"):
            yield name, "non_brain", True, vol, None
            continue
        yield name, "clean", False, vol, None
        for j in range(n_clean_variants):
            data = vol.data
            for ax in (0, 1):
                if rng.random() < 0.5:
                    data = np.flip(data, axis=ax)
            gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            yield (f"{name}|variant{j}|gamma={gamma:.2f}", "clean_variant", False,
                   _rebuild(np.clip(data, 0, None) ** gamma, vol.zooms), None)
        for art in EVAL_ARTIFACTS:
            sev = float(rng.uniform(*severity))
            params = artifacts.sample_params(art, rng, severity=sev, ndim=3)
            corrupted = artifacts.apply_artifact(vol.data, art, params, zooms=vol.zooms)
            case = _rebuild(corrupted, vol.zooms)
            change = similarity.realised_change(vol.data, case.data, vol.mask)
            yield f"{name}|{art}|severity={sev:.2f}", art, True, case, change
        yield f"{name}|truncated_lr", "truncated_fov", True, _rebuild(truncate_half(vol, axis=0), vol.zooms), None
        yield (f"{name}|cropped_ap", "truncated_fov", True,
               _rebuild(truncate_half(vol, axis=1, crop=True), vol.zooms), None)


def evaluate_flow(scorer, volumes, rng: np.random.Generator, n_clean_variants: int = 3) -> dict:
    """Sensitivity / specificity of the reference-density flags on clean vs artifact-laden volumes.

    Parameters
    ----------
    scorer
        A :class:`bids_qa.models.flow.FlowScorer`.
    volumes
        ``[(manifest entry, Volume)]`` as returned by ``clean_volumes(data_dir, "validation")``;
        entries with ``out_of_scope`` are used as non-brain (wrong field of view) cases.
    rng
        Draws the artifact parameters and the clean variants.

    Returns
    -------
    dict
        ``at_5pct`` / ``at_3pct`` (sensitivity, specificity, counts), ``per_category`` detection or
        pass rates, ``cases`` (name, category, m1, m2, log_density, percentile, flags) and the mean
        scoring time per volume.
    """
    cases = []
    times = []
    for name, category, is_art, vol, change in evaluation_cases(volumes, rng, n_clean_variants):
        t0 = time.perf_counter()
        s = scorer.score(vol)
        times.append(time.perf_counter() - t0)
        cases.append({"name": name, "category": category, "artifact": bool(is_art),
                      "change": change, **s.values})
    out: dict = {"n_cases": len(cases), "score_seconds_mean": float(np.mean(times)),
                 "score_seconds_max": float(np.max(times))}
    art = np.array([c["artifact"] for c in cases])
    for p in ("5", "3"):
        flag = np.array([c[f"flag_{p}pct"] for c in cases]) == 1
        tp, fn = int((flag & art).sum()), int((~flag & art).sum())
        tn, fp = int((~flag & ~art).sum()), int((flag & ~art).sum())
        out[f"at_{p}pct"] = {"sensitivity": tp / max(1, tp + fn), "specificity": tn / max(1, tn + fp),
                             "tp": tp, "fn": fn, "tn": tn, "fp": fp}
    per: dict = {}
    for cat in dict.fromkeys(c["category"] for c in cases):
        sel = [c for c in cases if c["category"] == cat]
        per[cat] = {"n": len(sel), "flagged_5pct": float(np.mean([c["flag_5pct"] for c in sel])),
                    "flagged_3pct": float(np.mean([c["flag_3pct"] for c in sel])),
                    "median_log_density": float(np.median([c["log_density"] for c in sel]))}
        changes = [c["change"] for c in sel if c["change"] is not None]
        if changes:
            per[cat]["median_change"] = float(np.median(changes))
    out["per_category"] = per
    out["cases"] = cases
    return out


# --------------------------------------------------------------------------------------------
# entry point


def load_sources(data_dir: str, n_synthetic: int, seed: int, mix=None, exclude_folders=()):
    """(train sources, validation sources, train reference volumes [(name, Volume)], validation volumes).

    ``exclude_folders`` leaves whole training sources out (a leave-one-site-out run)."""
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    train = clean_volumes(data_dir, "train", mix=mix, exclude_folders=exclude_folders)
    val_all = clean_volumes(data_dir, "validation", include_out_of_scope=True, mix=mix)
    ref = [(str(e["path"]), v) for e, v in train]
    if n_synthetic:
        rng = np.random.default_rng([seed, 104729])
        ref += [(str(e["path"]), v) for e, v in synthetic_volumes(n_synthetic, rng)]
    train_sources = [make_source(v, name=n) for n, v in ref]
    val_sources = [make_source(v, name=str(e["path"])) for e, v in val_all if not e.get("out_of_scope")]
    return train_sources, val_sources, ref, val_all


def main(argv: list[str] | None = None) -> int:


    from bids_qa.models.flow import FlowScorer
    from bids_qa.models.weights import load_weights, save_weights
    from bids_qa.reports.figures import plot_m_plane

    argv, args, settings = loop.parse_run(build_parser, argv)
    if args.reference_only:
        from bids_qa.training.flow_reference import run_reference_only

        return run_reference_only(args, settings, argv)
    if args.synthetic is None:
        args.synthetic = 6
    loop.limit_threads(settings.threads)
    enc_config = EncoderConfig(input_size=args.input_size, channels=tuple(args.channels), output_scale=args.output_scale)
    flow_config = FlowConfig()
    fit = FitConfig(steps=args.flow_steps, seed=settings.seed)
    t_load = time.time()
    train_sources, val_sources, ref, val_all = load_sources(settings.data_dir, args.synthetic, settings.seed,
                                                           synthetic_mix(settings), args.exclude_folder)
    print(f"loaded {len(train_sources)} training volumes ({args.synthetic} synthetic), {len(val_all)} validation "
          f"volumes in {time.time() - t_load:.0f}s", flush=True)
    arts = tuple(args.artifacts)
    maker = ContrastiveMaker(train_sources, enc_config.input_size, arts, args.negatives, args.corrupt_prob,
                             args.both_motion_models)
    val_maker = ContrastiveMaker(val_sources, enc_config.input_size, arts, args.negatives, args.corrupt_prob,
                                 args.both_motion_models)
    best = train_encoder(settings, maker, val_maker, enc_config, argv, mask_same_level=args.mask_same_level,
                         init=args.init)
    print(f"encoder: best step {best.get('step')} {json.dumps(best.get('metrics'))}", flush=True)

    run_dir = Path(settings.run_dir)
    net = build_encoder(enc_config)
    state, _ = load_weights(run_dir / "best_encoder.safetensors")
    net.load_state_dict(state)
    net.eval()
    t0 = time.time()
    ref_m, ref_names = reference_population(net, ref, enc_config.input_size)
    extra = {"tag": f"s{best.get('step')}",
             "training": {"settings": json.loads((run_dir / "settings.json").read_text()), "best_step": best.get("step"),
                          "validation": best.get("metrics"), "train_seconds": best.get("train_seconds"),
                          "negative_artifacts": list(arts), "corrupt_prob": args.corrupt_prob,
                          "negatives": args.negatives, "norm_penalty": NORM_PENALTY,
                          "mask_same_level": args.mask_same_level,
                          "both_motion_models": args.both_motion_models,
                          **({"init": loop.file_record(args.init)} if args.init else {})}}
    wstate, meta, fitted = build_weights(net, enc_config, flow_config, fit, ref_m, ref_names, extra)
    out_path = run_dir / "flow.safetensors"
    save_weights(out_path, wstate, meta)
    print(f"reference flow on {len(ref_m)} points in {time.time() - t0:.0f}s; 5% level {fitted.level(5):.3f}", flush=True)

    if args.evaluate:
        scorer = FlowScorer(device=settings.device, weights=str(out_path))
        t0 = time.time()
        result = evaluate_flow(scorer, val_all, np.random.default_rng([settings.seed, 424242]))
        result["eval_seconds"] = round(time.time() - t0, 1)
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        cases = result["cases"]
        plot_m_plane(np.array([[c["m1"], c["m2"]] for c in cases]), [c["category"] for c in cases], fitted,
                     run_dir / "m_plane.png", title="validation volumes over the reference density",
                     reference_m=ref_m)
        meta["evaluation"] = {k: v for k, v in result.items() if k != "cases"}
        save_weights(out_path, wstate, meta)
        print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=2), flush=True)
    loop.export_weights(out_path, args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
