"""Shared PyTorch plumbing: device choice, the seeded mini-batch training loop, safe save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["device", "train_net", "predict_net", "save_net", "load_state"]


def device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_net(net: nn.Module, inputs: dict[str, np.ndarray], y: np.ndarray, weight: np.ndarray | None = None,
              epochs: int = 6, batch: int = 2048, lr: float = 1e-2, weight_decay: float = 1e-5, seed: int = 7,
              threads: int = 1) -> list[float]:
    """Adam on (weighted) binary cross-entropy; returns the mean loss per epoch.

    `threads` CPU threads: on a shared 2-core machine one thread with batches of 2048 ran an epoch 5-8x
    faster than two threads with batches of 512 (benchmarks/RESULTS.md); the caller's setting is restored.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(net, inputs, y, weight, epochs, batch, lr, weight_decay, seed)
    finally:
        torch.set_num_threads(previous)


def _train(net: nn.Module, inputs: dict[str, np.ndarray], y: np.ndarray, weight: np.ndarray | None, epochs: int,
           batch: int, lr: float, weight_decay: float, seed: int) -> list[float]:
    dev = device()
    torch.manual_seed(seed)  # the shuffling and dropout of this fit; init is seeded by the caller
    gen = torch.Generator().manual_seed(seed)
    net.to(dev).train()
    tensors = {k: torch.as_tensor(v).to(dev) for k, v in inputs.items()}
    target = torch.as_tensor(np.asarray(y, dtype="float32")).to(dev)
    w = torch.as_tensor(np.ones(len(y), dtype="float32") if weight is None else np.asarray(weight, dtype="float32")).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    n = len(target)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(dev)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            logits = net(**{k: v[idx] for k, v in tensors.items()})
            loss = (nn.functional.binary_cross_entropy_with_logits(logits, target[idx], reduction="none") * w[idx]).sum() / w[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    net.eval()
    return losses


@torch.no_grad()
def predict_net(net: nn.Module, inputs: dict[str, np.ndarray], batch: int = 65_536) -> np.ndarray:
    """Probabilities for all rows, in large batches."""
    dev = next(net.parameters()).device
    n = len(next(iter(inputs.values())))
    out = []
    for start in range(0, n, batch):
        chunk = {k: torch.as_tensor(v[start:start + batch]).to(dev) for k, v in inputs.items()}
        out.append(torch.sigmoid(net(**chunk)).cpu().numpy())
    return np.concatenate(out).astype("float64") if out else np.zeros(0)


def save_net(net: nn.Module, folder: Path, meta: dict) -> None:
    """A state_dict (tensors only) and JSON metadata: nothing that needs pickle to read."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / "weights.pt")
    (folder / "meta.json").write_text(json.dumps(meta))


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
