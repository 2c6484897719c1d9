"""Flow-density model (Zuo et al.: Zuo et al., "A latent space for unsupervised MR image quality
control via artifact assessment", SPIE Medical Imaging 2023).

Two parts:

- an *artifact encoder* E, a small 2D CNN mapping one slice to ``m`` in R^2, trained with the
  paper's contrastive loss (Eq. 1; see :mod:`bids_qa.training.flow`). A volume's ``m`` is the mean
  over its 20 centre anatomy-bearing slices in the acquisition plane (the paper: 20 centre axial
  slices of 1 mm volumes; for 2D clinical scans only the acquisition plane is sharp);
- a *RealNVP* normalizing flow f with six affine coupling layers mapping ``m`` to z ~ N(0, I), so the
  density of ``m`` is exact (Eq. 2): ``log p(m) = log N(f(m); 0, I) + log |det df/dm|``. A scan is an
  outlier when its density falls below the 5% (or 3%) density level of a population, i.e. below the
  5th (3rd) percentile of the population's own densities.

Two populations are supported: the *reference* population (our clean training volumes, fitted once
and shipped with the weights, so a single participant run can flag outliers) and the *dataset*
population (:func:`dataset_outliers` refits a flow on one dataset's ``m`` values at the group level,
which is the paper's actual use: "most images of a large dataset are acceptable").

Everything here is pure apart from the scorer's weight
loading. torch is imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from bids_qa.models.config import ModelConfig
from bids_qa.scoring import ScanScores, Scorer, anatomy_indices, volume_view
from bids_qa.volume import Volume

NAME = "flow"
WEIGHTS_FILE = "flow.safetensors"
#: Centre slices averaged into the volume's ``m`` (Zuo et al. Sec. 3.1).
N_CENTRE_SLICES = 20
#: Density levels reported (Zuo et al.: tau = 5% and 3%).
LEVELS = (5.0, 3.0)
#: A dataset needs at least this many scans of one contrast before its own flow is refitted.
MIN_GROUP_SCANS = 30


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class EncoderConfig(ModelConfig):
    """Artifact-encoder hyper-parameters (stored in the weights' metadata)."""

    input_size: int = 128
    channels: tuple[int, int, int] = (8, 16, 32)
    hidden: int = 32
    negative_slope: float = 0.2
    #: Fixed factor on the output. Eq. 1 has no temperature; with a freshly initialised head the
    #: dot products are ~0.1 and learning crawls. Scaling m by 4 is the same as a temperature of
    #: 1/16 on the dot products, and leaves the loss exactly the paper's for the scaled m.
    output_scale: float = 4.0

    #: Weights saved before ``output_scale`` existed had none (a factor of 1).
    LEGACY_DEFAULTS = {"output_scale": 1.0}  # noqa: RUF012 - not a dataclass field


@dataclass(frozen=True)
class FlowConfig(ModelConfig):
    """RealNVP shape: ``n_layers`` affine couplings, each with an MLP of two ``hidden``-wide layers.

    ``scale_bound`` caps the log-scale of every coupling (``s = bound * tanh(raw / bound)``) so one
    layer can stretch space by at most ``exp(bound)``; this keeps the fit stable on tiny samples.
    """

    n_layers: int = 6
    hidden: int = 32
    scale_bound: float = 2.0

@dataclass(frozen=True)
class FitConfig(ModelConfig):
    """How a flow is fitted by maximum likelihood (full batch, fixed steps, so it is deterministic).

    ``jitter_scale``: each step sees the data plus Gaussian noise of standard deviation
    ``jitter_scale * n ** (-1/6)`` (in robust-standardised units; ``n ** (-1/6)`` is Scott's rule for
    a 2D kernel density). With tens of points a flow otherwise collapses onto the points themselves;
    with the noise it fits a smoothed density, as a kernel estimate would.
    """

    steps: int = 600
    lr: float = 5e-3
    weight_decay: float = 1e-4
    jitter_scale: float = 0.5
    seed: int = 0

# --------------------------------------------------------------------------------------------
# networks


@lru_cache(maxsize=1)
def _modules():
    """Define the torch modules once, on first use (keeps ``import bids_qa.models.flow`` torch-free)."""
    import torch
    from torch import nn

    class ArtifactEncoder(nn.Module):
        """(B, 1, S, S) -> (B, 2): three [conv s2 -> IN -> LReLU -> conv -> IN -> LReLU] blocks,
        global average and max pooling, a two-layer head."""

        def __init__(self, config: EncoderConfig) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin = 1
            for cout in config.channels:
                layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.InstanceNorm2d(cout, affine=True),
                           nn.LeakyReLU(config.negative_slope),
                           nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                           nn.LeakyReLU(config.negative_slope)]
                cin = cout
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Linear(2 * cin, config.hidden), nn.LeakyReLU(config.negative_slope),
                                      nn.Linear(config.hidden, 2))
            self.output_scale = float(config.output_scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x)
            pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
            return self.head(pooled) * self.output_scale

    class AffineCoupling(nn.Module):
        """One RealNVP coupling on R^2: keeps coordinate ``cond``, maps the other one affinely.

        ``y_out = x_out * exp(s(x_cond)) + t(x_cond)``, ``s = bound * tanh(raw / bound)``;
        log |det J| = s (the Jacobian is triangular with ones and exp(s) on the diagonal).
        """

        def __init__(self, cond: int, hidden: int, bound: float) -> None:
            super().__init__()
            self.cond, self.out, self.bound = cond, 1 - cond, bound
            self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2))

        def _st(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raw = self.net(xc)
            return self.bound * torch.tanh(raw[:, 0] / self.bound), raw[:, 1]

        def _join(self, keep: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
            cols = [keep, moved] if self.cond == 0 else [moved, keep]
            return torch.stack(cols, dim=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s, t = self._st(x[:, self.cond : self.cond + 1])
            return self._join(x[:, self.cond], x[:, self.out] * torch.exp(s) + t), s

        def inverse(self, y: torch.Tensor) -> torch.Tensor:
            s, t = self._st(y[:, self.cond : self.cond + 1])
            return self._join(y[:, self.cond], (y[:, self.out] - t) * torch.exp(-s))

    class RealNVP(nn.Module):
        """f: R^2 -> R^2, a stack of couplings with alternating conditioning coordinate."""

        def __init__(self, config: FlowConfig) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                AffineCoupling(i % 2, config.hidden, config.scale_bound) for i in range(config.n_layers))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(z, log |det df/dx|) for a batch (n, 2)."""
            logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for layer in self.layers:
                x, ld = layer(x)
                logdet = logdet + ld
            return x, logdet

        def inverse(self, z: torch.Tensor) -> torch.Tensor:
            for layer in reversed(self.layers):
                z = layer.inverse(z)
            return z

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            """Eq. 2: log N(f(x); 0, I) + log |det df/dx|."""
            z, logdet = self(x)
            return -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet

    return ArtifactEncoder, RealNVP


def build_encoder(config: EncoderConfig):
    """The artifact encoder E as a ``torch.nn.Module`` mapping (B, 1, S, S) -> (B, 2)."""
    return _modules()[0](config)


def build_realnvp(config: FlowConfig, generator=None):
    """A float64 RealNVP; with ``generator`` (a ``torch.Generator``) its initial weights come from it.

    The last layer of every coupling network starts at zero, so an unfitted flow is the identity and
    its density the standard normal.
    """
    import torch

    flow = _modules()[1](config).double()
    with torch.no_grad():
        for layer in flow.layers:
            linears = [m for m in layer.net if isinstance(m, torch.nn.Linear)]
            for lin in linears[:-1]:
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()
    return flow


@contextmanager
def _single_thread():
    """Run torch on one intra-op thread inside the block (reproducible sums, polite on shared CPUs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# a fitted density


class FittedFlow:
    """A flow fitted to one population of ``m`` values, with that population's density levels.

    Attributes
    ----------
    flow
        The float64 RealNVP (in eval mode).
    center, scale
        Robust standardisation applied before the flow (median and 1.4826 * MAD per coordinate);
        :meth:`log_density` includes its Jacobian, so densities are per unit of ``m``.
    population_log_density
        Sorted log densities of the population the flow was fitted on; percentiles and the 5% / 3%
        levels are read from it.
    """

    def __init__(self, flow, config: FlowConfig, center: np.ndarray, scale: np.ndarray,
                 population_log_density: np.ndarray, population_m: np.ndarray | None = None) -> None:
        self.flow = flow.eval()
        self.config = config
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.population_log_density = np.sort(np.asarray(population_log_density, dtype=np.float64))
        self.population_m = None if population_m is None else np.asarray(population_m, dtype=np.float64)

    def log_density(self, m: np.ndarray) -> np.ndarray:
        """log p_M(m) for an array (n, 2) (or one point (2,)), Eq. 2 plus the standardisation term."""
        import torch

        m = np.asarray(m, dtype=np.float64)
        single = m.ndim == 1
        x = (np.atleast_2d(m) - self.center) / self.scale
        with torch.inference_mode():
            lp = self.flow.log_prob(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        lp = lp - float(np.log(self.scale).sum())
        return lp[0] if single else lp

    def level(self, percent: float) -> float:
        """The ``percent``% density level: that percentile of the population's log densities."""
        return float(np.percentile(self.population_log_density, percent))

    def percentile(self, log_density: np.ndarray | float) -> np.ndarray | float:
        """Percent of the population whose density is at or below ``log_density`` (0-100)."""
        ld = np.asarray(log_density, dtype=np.float64)
        rank = np.searchsorted(self.population_log_density, ld, side="right")
        out = 100.0 * rank / len(self.population_log_density)
        return float(out) if out.ndim == 0 else out

    def judge(self, m: np.ndarray) -> dict[str, np.ndarray]:
        """log_density, percentile, flag_5pct, flag_3pct for an array (n, 2)."""
        ld = self.log_density(np.atleast_2d(m))
        out: dict[str, np.ndarray] = {"log_density": ld, "percentile": np.asarray(self.percentile(ld))}
        for p in LEVELS:
            out[f"flag_{p:g}pct"] = (ld < self.level(p)).astype(np.int64)
        return out

    # serialisation -------------------------------------------------------------------------
    def state_dict(self, prefix: str) -> dict[str, Any]:
        import torch

        state = {f"{prefix}flow.{k}": v for k, v in self.flow.state_dict().items()}
        state[f"{prefix}center"] = torch.from_numpy(self.center.copy())
        state[f"{prefix}scale"] = torch.from_numpy(self.scale.copy())
        state[f"{prefix}population_log_density"] = torch.from_numpy(self.population_log_density.copy())
        if self.population_m is not None:
            state[f"{prefix}population_m"] = torch.from_numpy(self.population_m.copy())
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], prefix: str, config: FlowConfig) -> FittedFlow:
        flow = build_realnvp(config)
        flow.load_state_dict({k[len(prefix) + 5 :]: v for k, v in state.items() if k.startswith(prefix + "flow.")})
        pm = state.get(f"{prefix}population_m")
        return cls(flow, config, state[f"{prefix}center"].numpy(), state[f"{prefix}scale"].numpy(),
                   state[f"{prefix}population_log_density"].numpy(), None if pm is None else pm.numpy())


def robust_standardisation(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 * MAD per coordinate (outliers barely move them; floor keeps scale > 0)."""
    center = np.median(m, axis=0)
    mad = 1.4826 * np.median(np.abs(m - center), axis=0)
    std = m.std(axis=0)
    scale = np.where(mad > 1e-9, mad, np.where(std > 1e-9, std, 1.0))
    return center, scale


def fit_flow(m: np.ndarray, config: FlowConfig = FlowConfig(), fit: FitConfig = FitConfig()) -> FittedFlow:
    """Fit a RealNVP to the points ``m`` (n, 2) by minimising -log p(m) (Eq. 2).

    Deterministic: weights and jitter come from a ``torch.Generator`` seeded with ``fit.seed``, full
    batch, fixed number of Adam steps, float64, one thread.

    Parameters
    ----------
    m
        Finite points, shape (n, 2), n >= 3.
    config, fit
        Flow shape and fitting schedule.

    Returns
    -------
    FittedFlow
        With the population log densities of ``m`` itself (for percentiles and levels).

    Raises
    ------
    ValueError
        If ``m`` is not (n, 2), has fewer than 3 points or non-finite values.
    """
    import torch

    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != 2:
        raise ValueError(f"m must have shape (n, 2); got {m.shape}")
    if len(m) < 3:
        raise ValueError(f"a density needs at least 3 points; got {len(m)}")
    if not np.isfinite(m).all():
        raise ValueError("m contains NaN or Inf; drop the failed scans before fitting")
    center, scale = robust_standardisation(m)
    x = torch.from_numpy((m - center) / scale)
    jitter = fit.jitter_scale * len(m) ** (-1.0 / 6.0)
    with _single_thread():
        gen = torch.Generator().manual_seed(int(fit.seed))
        flow = build_realnvp(config, gen)
        opt = torch.optim.Adam(flow.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
        flow.train()
        for _ in range(fit.steps):
            xb = x + jitter * torch.randn(x.shape, generator=gen, dtype=torch.float64)
            loss = -flow.log_prob(xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        flow.eval()
        fitted = FittedFlow(flow, config, center, scale, np.zeros(1), m)
        fitted.population_log_density = np.sort(fitted.log_density(m))
    return fitted


def refit_flow(m: np.ndarray, seed: int = 0) -> FittedFlow:
    """Group level: fit a fresh flow on one dataset's own ``m`` values (one contrast at a time).

    Same shape and schedule as the shipped reference flow (:class:`FlowConfig`, :class:`FitConfig`);
    about a second on one CPU thread for a few hundred scans; same input and seed give the same
    output bit for bit.
    """
    return fit_flow(m, FlowConfig(), FitConfig(seed=seed))


def dataset_outliers(m: np.ndarray, seed: int = 0, min_scans: int = MIN_GROUP_SCANS):
    """Density outliers of a dataset relative to itself (Zuo et al. Sec. 2.2), or ``None``.

    Parameters
    ----------
    m
        ``(n, 2)`` volume ``m`` values of one contrast (the ``flow.m1``/``flow.m2`` columns). Rows with
        NaN (failed scans) are left out of the fit and get NaN / missing flags.
    seed
        Seed of the refit.
    min_scans
        Fewer finite rows than this -> ``None``: the caller keeps the reference-population values
        and says so.

    Returns
    -------
    pandas.DataFrame or None
        One row per input row, columns ``log_density``, ``percentile``, ``flag_5pct``, ``flag_3pct``
        (flags are nullable integers: 1 below the dataset's 5% / 3% density level, else 0).
    """
    import pandas as pd

    m = np.asarray(m, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(m).all(axis=1)
    if ok.sum() < min_scans:
        return None
    fitted = refit_flow(m[ok], seed=seed)
    judged = fitted.judge(m[ok])
    out = pd.DataFrame({"log_density": np.full(len(m), np.nan), "percentile": np.full(len(m), np.nan)})
    out.loc[ok, "log_density"] = judged["log_density"]
    out.loc[ok, "percentile"] = judged["percentile"]
    for p in LEVELS:
        col = f"flag_{p:g}pct"
        flags = pd.array([pd.NA] * len(m), dtype="Int64")
        flags[np.flatnonzero(ok)] = judged[col]
        out[col] = flags
    return out


# --------------------------------------------------------------------------------------------
# volume-level m and the scorer


def centre_slices(indices: np.ndarray, n: int = N_CENTRE_SLICES) -> np.ndarray:
    """The ``n`` centred entries of a sorted index array (all of them if there are fewer)."""
    if len(indices) <= n:
        return indices
    start = (len(indices) - n) // 2
    return indices[start : start + n]


def encode_slices(net, slices: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Per-slice ``m`` (k, 2) for slices (k, S, S) already at the encoder's input size."""
    from bids_qa.models.weights import predict_batched

    return predict_batched(net, slices, batch_size, device).reshape(len(slices), 2)


def stack_m(net, stack: np.ndarray, anatomy: np.ndarray, batch_size: int = 64, device: str = "cpu"):
    """Volume ``m`` from a slice stack: (m (2,), per-slice m (k, 2), slice indices (k,))."""
    if len(anatomy) == 0:
        anatomy = np.arange(len(stack))
    idx = centre_slices(np.asarray(anatomy))
    per_slice = encode_slices(net, stack[idx], batch_size, device)
    return per_slice.astype(np.float64).mean(0), per_slice, idx


def load_reference(weights: str | None = None) -> FittedFlow:
    """The shipped reference density alone (no encoder): for group reports that only read
    derivatives and want to draw the reference population (``population_m``) and its contours."""
    from bids_qa.models.weights import load_weights, packaged_weights

    state, meta = load_weights(weights or packaged_weights(WEIGHTS_FILE))
    return FittedFlow.from_state(state, "reference.", FlowConfig.from_dict(meta["flow_config"]))


class FlowScorer(Scorer):
    """Scores a volume's artifact representation against the shipped reference density.

    Values: ``m1``, ``m2`` (the volume's ``m``), ``log_density`` (log p(m) under the reference flow),
    ``percentile`` (percent of the clean reference population with a density at or below this
    scan's), ``flag_5pct`` / ``flag_3pct`` (1 when the density is below the reference population's
    5% / 3% density level). Per slice: ``m1``, ``m2`` of the 20 centre slices.
    """

    name = NAME

    def __init__(self, device: str = "cpu", batch_size: int = 0, weights: str | None = None) -> None:
        from bids_qa.models.weights import (
            default_batch_size,
            load_weights,
            packaged_weights,
            resolve_device,
        )

        state, meta = load_weights(weights or packaged_weights(WEIGHTS_FILE))
        self.metadata = meta
        self.version = str(meta.get("version", "unknown"))
        self.encoder_config = EncoderConfig.from_dict(meta["encoder_config"])
        self.flow_config = FlowConfig.from_dict(meta["flow_config"])
        self.device = resolve_device(device)
        self.batch_size = int(batch_size) or default_batch_size(self.device)
        self.net = build_encoder(self.encoder_config)
        self.net.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        self.net.eval().to(self.device)
        self.reference = FittedFlow.from_state(state, "reference.", self.flow_config)

    def volume_m(self, volume: Volume):
        """(m (2,), per-slice m (k, 2), slice indices (k,)) of a volume."""
        inputs, idx = self.encoder_inputs(volume)
        per_slice = encode_slices(self.net, inputs, self.batch_size, self.device)
        return per_slice.astype(np.float64).mean(0), per_slice, idx

    def encoder_inputs(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """(the centre anatomy slices at the encoder's input size (k, S, S), their indices (k,)),
        cached on the volume; the same slices :func:`stack_m` encodes."""
        size = self.encoder_config.input_size

        def compute() -> tuple[np.ndarray, np.ndarray]:
            stack = volume.slice_stack(size)
            anatomy = anatomy_indices(volume)
            if len(anatomy) == 0:
                anatomy = np.arange(len(stack))
            idx = centre_slices(np.asarray(anatomy))
            return stack[idx], idx

        key = ("flow_inputs", size, N_CENTRE_SLICES, volume.slice_axis)
        return volume_view(volume, key, compute)

    def prepare(self, volume: Volume) -> None:
        """Cache the encoder's input slices on ``volume`` (loader threads)."""
        self.encoder_inputs(volume)

    def score_many(
        self, volumes: Sequence[Volume], suffixes: Sequence[str | None] | None = None
    ) -> list[ScanScores]:
        """Encode the centre slices of several volumes in one batched pass, then judge each
        volume's ``m`` against the reference density (one call for all)."""
        parts = [self.encoder_inputs(v) for v in volumes]
        from bids_qa.models.weights import predict_batched

        encoded = predict_batched(self.net, [x for x, _ in parts], self.batch_size, self.device)
        encoded = encoded.reshape(len(encoded), 2)
        per_volume, pos = [], 0
        for inputs, _ in parts:
            per_volume.append(encoded[pos : pos + len(inputs)].copy())
            pos += len(inputs)
        m_all = np.stack([ps.astype(np.float64).mean(0) for ps in per_volume])
        judged = self.reference.judge(m_all)
        results = []
        for i, (volume, (_, idx), per_slice) in enumerate(zip(volumes, parts, per_volume, strict=True)):
            m = m_all[i]
            values: dict[str, float | int | str] = {
                "m1": float(m[0]), "m2": float(m[1]),
                "log_density": float(judged["log_density"][i]),
                "percentile": float(judged["percentile"][i]),
                "flag_5pct": int(judged["flag_5pct"][i]), "flag_3pct": int(judged["flag_3pct"][i]),
            }
            results.append(ScanScores(
                scorer=NAME, values=values,
                per_slice={"slice_index": idx.astype(np.int32), "m1": per_slice[:, 0], "m2": per_slice[:, 1]},
                slice_axis=volume.slice_axis))
        return results


def config_metadata(encoder: EncoderConfig, flow: FlowConfig, fit: FitConfig) -> dict[str, Any]:
    """The configuration block stored in the weights' metadata."""
    return {"encoder_config": encoder.to_dict(), "flow_config": flow.to_dict(),
            "fit_config": fit.to_dict()}
