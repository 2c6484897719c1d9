"""Pickle-free weight files: safetensors tensors plus a JSON metadata block.

The metadata carries everything needed to rebuild the network (architecture config) and to say
where the weights came from (training command, data manifest hash, seed, metrics), so a weight file
is self-describing and loading it never executes code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_qa.scoring import Scorer

if TYPE_CHECKING:
    import numpy as np


def packaged_weights(name: str) -> Path:
    """Path of a weights file shipped inside the package (``bids_qa/weights/<name>``)."""
    return Path(str(resources.files("bids_qa").joinpath("weights", name)))


def save_weights(path: str | Path, state_dict: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write ``state_dict`` as safetensors with ``metadata`` stored as one JSON string.

    Tensors are made contiguous and moved to CPU; the file is written by the one atomic writer
    (:func:`bids_qa.io.atomic_write_bytes`, mode from the umask).
    """
    from safetensors.torch import save

    from bids_qa.io import atomic_write_bytes

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    data = save(tensors, metadata={"bids_qa": json.dumps(metadata, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_weights`: (state_dict, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found; this model family is not installed"
        )
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("bids_qa", "{}"))
    return load_file(str(path)), meta


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto"
        )
    return device


@dataclass
class LoadedNetwork:
    """A network rebuilt from a weights file, in eval mode on its device."""

    net: Any
    config: Any
    metadata: dict[str, Any]
    version: str
    device: str


def load_network(
    family: str,
    weights_file: str,
    weights: str | None,
    device: str,
    config_from_dict: Callable[[dict[str, Any]], Any],
    build: Callable[[Any], Any],
) -> LoadedNetwork:
    """Rebuild a family's network from its shipped weights (or ``weights``): read the file, rebuild
    the architecture from the metadata's ``config``, load the tensors, move to ``device``."""
    state, meta = load_weights(weights or packaged_weights(weights_file))
    if "config" not in meta:
        raise ValueError(
            f"weights {weights or weights_file} carry no architecture config; not a {family} weight file"
        )
    config = config_from_dict(meta["config"])
    dev = resolve_device(device)
    net = build(config)
    net.load_state_dict(state)
    net.eval().to(dev)
    return LoadedNetwork(
        net=net,
        config=config,
        metadata=meta,
        version=str(meta.get("version", "unknown")),
        device=dev,
    )


class NetworkScorer(Scorer):
    """A scorer whose network is rebuilt from a weights file (:func:`load_network`): the shipped
    ``weights_file`` or the file ``weights``. Subclasses name their ``config_class`` (a
    :class:`bids_qa.models.config.ModelConfig`) and ``network_builder`` (config -> module)."""

    weights_file: str = ""
    config_class: Any = None
    network_builder: Callable[[Any], Any]
    #: Keep the network's 4D weights channels-last on CPU. Why: oneDNN's convolutions run
    #: about 30 % faster in that layout for the SSIM ResNet (0.245 -> 0.173 CPU s per batch of 64
    #: slices, one thread) with bit-identical outputs; the severity encoder runs slower in it, so
    #: each family opts in (``bench`` note in docs/performance.md).
    channels_last_on_cpu: bool = False
    #: Items per forward pass on CPU when the batch size is left at auto (0).
    cpu_batch_size: int = 64

    def __init__(self, device: str = "cpu", batch_size: int = 0, weights: str | None = None) -> None:
        loaded = load_network(
            self.name,
            self.weights_file,
            weights,
            device,
            self.config_class.from_dict,
            type(self).network_builder,
        )
        self.net, self.config, self.metadata = loaded.net, loaded.config, loaded.metadata
        self.version, self.device = loaded.version, loaded.device
        self.batch_size = int(batch_size) or default_batch_size(self.device, self.cpu_batch_size)
        if self.channels_last_on_cpu and self.device == "cpu":
            import torch

            self.net.to(memory_format=torch.channels_last)

    def forward(self, inputs: Any, post: Callable[[Any], Any] | None = None) -> np.ndarray:
        """The network's outputs for ``inputs`` (an array, or a list of arrays taken as their
        concatenation), :func:`predict_batched` in this scorer's batch size and device."""
        return predict_batched(self.net, inputs, self.batch_size, self.device, post=post)


#: Default forward-pass batch (items per pass) on CPU: larger batches do not run faster there and
#: only cost memory. A family may choose its own (``NetworkScorer.cpu_batch_size``).
CPU_BATCH_SIZE = 64
#: Default forward-pass batch on CUDA: a 128x128 slice batch of 512 is 32 MB of input, small
#: next to a GPU's memory, and big enough to keep the GPU busy between host-side steps.
CUDA_BATCH_SIZE = 512


def default_batch_size(device: str, cpu: int = CPU_BATCH_SIZE) -> int:
    """Items per forward pass when the user leaves ``--batch-size`` at ``auto``: ``cpu`` on CPU
    (the family's own choice), :data:`CUDA_BATCH_SIZE` on CUDA."""
    return CUDA_BATCH_SIZE if str(device).startswith("cuda") else max(1, int(cpu))


def _batches(inputs: Any, batch_size: int):
    """Yield float32 arrays of at most ``batch_size`` items taken in order from ``inputs``: one
    array (n, ...) or a sequence of arrays with the same trailing shape (e.g. the slices of several
    scans). Batches may span two arrays; only such a batch is copied, so scoring several scans
    needs no concatenated copy of all their inputs."""
    pending: list[Any] = []
    filled = 0
    for part in _parts(inputs):
        start = 0
        while start < len(part):
            take = min(batch_size - filled, len(part) - start)
            pending.append(part[start : start + take])
            filled += take
            start += take
            if filled == batch_size:
                yield _join(pending)
                pending, filled = [], 0
    if pending:
        yield _join(pending)


def _parts(inputs: Any) -> list[Any]:
    """``inputs`` as a list of arrays (one array is a list of one)."""
    import numpy as np

    return [inputs] if isinstance(inputs, np.ndarray) else list(inputs)


def _join(pieces: list[Any]):
    import numpy as np

    if len(pieces) == 1:
        return np.ascontiguousarray(pieces[0], dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def predict_batched(net, inputs, batch_size: int, device: str, post=None):
    """Run ``net`` over ``inputs`` in batches, adding the channel axis; float32 numpy out.

    ``inputs`` is one array (n, ...) or a sequence of arrays with the same trailing shape, taken
    as their concatenation (how a scorer batches the slices of several scans, see
    :func:`bids_qa.scoring.score_many`). Every model family scores through this one loop.

    On CUDA (why each step):

    * each batch is copied into one of two pinned (page-locked) host buffers and sent with a
      ``non_blocking`` copy, so the transfer runs asynchronously and the host prepares the next
      batch meanwhile; the buffer is reused only after its previous copy has completed (an event
      per buffer), so nothing is overwritten in flight;
    * the forward pass runs under ``torch.autocast`` (float16 matrix products with float32
      accumulation; see ``tests/test_gpu.py`` for the agreement with CPU);
    * outputs stay on the GPU until the end and come back in one copy, so the host never waits
      for the GPU inside the loop.

    ``post`` (e.g. ``torch.sigmoid``) is applied to each batch's float32 output.
    """
    import numpy as np
    import torch

    batch_size = max(1, int(batch_size))
    inputs = _parts(inputs)
    cuda = str(device).startswith("cuda")
    outs = []
    with torch.inference_mode():
        if not cuda:
            for batch in _batches(inputs, batch_size):
                x = torch.from_numpy(batch)[:, None].to(device)
                y = net(x).float()
                outs.append((post(y) if post is not None else y).numpy())
        else:
            # Staging rows: a batch, or all the items when there are fewer (8 tiers grids of 64^3
            # need 8 MB of pinned memory, not a batch of 512 grids' 512 MB).
            rows = min(batch_size, sum(len(part) for part in inputs))
            staging: list[Any] = [None, None]
            copied: list[Any] = [None, None]
            for i, batch in enumerate(_batches(inputs, batch_size)):
                slot = i % 2
                host = staging[slot]
                if host is None:
                    host = torch.empty(
                        (rows, *batch.shape[1:]), dtype=torch.float32, pin_memory=True
                    )
                    staging[slot] = host
                elif copied[slot] is not None:
                    copied[slot].synchronize()  # the previous copy from this buffer has finished
                view = host[: len(batch)]
                view.copy_(torch.from_numpy(batch))
                x = view.to(device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(x.device))
                copied[slot] = event
                with torch.autocast("cuda"):
                    y = net(x[:, None])
                y = y.float()
                outs.append(post(y) if post is not None else y)
            outs = [torch.cat(outs).cpu().numpy()] if outs else []
    return (
        np.concatenate(outs).astype(np.float32, copy=False) if outs else np.empty((0,), np.float32)
    )
