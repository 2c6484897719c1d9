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
from typing import Any


def packaged_weights(name: str) -> Path:
    """Path of a weights file shipped inside the package (``bids_qa/weights/<name>``)."""
    return Path(str(resources.files("bids_qa").joinpath("weights", name)))


def save_weights(path: str | Path, state_dict: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write ``state_dict`` as safetensors with ``metadata`` stored as one JSON string.

    Tensors are made contiguous and moved to CPU; the file is written atomically.
    """
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"bids_qa": json.dumps(metadata, sort_keys=True)})
    os.chmod(tmp, 0o644)  # shipped inside images that run as any user
    os.replace(tmp, path)


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


def predict_batched(net, inputs, batch_size: int, device: str, post=None):
    """Run ``net`` over ``inputs`` (n, ...) in batches, adding the channel axis; float32 numpy out.

    On CUDA the forward pass runs under autocast (mixed precision); ``post`` (e.g. ``torch.sigmoid``)
    is applied to each batch's float32 output. Every model family scores through this one loop.
    """
    import numpy as np
    import torch

    outs = []
    use_amp = device.startswith("cuda")
    with torch.inference_mode():
        for start in range(0, len(inputs), max(1, int(batch_size))):
            batch = torch.from_numpy(
                np.ascontiguousarray(inputs[start : start + batch_size], dtype=np.float32)
            )
            batch = batch[:, None].to(device, non_blocking=True)
            with torch.autocast("cuda", enabled=use_amp):
                y = net(batch)
            y = y.float()
            outs.append((post(y) if post is not None else y).cpu().numpy())
    return (
        np.concatenate(outs).astype(np.float32, copy=False) if outs else np.empty((0,), np.float32)
    )
