"""Models: the built-in MLP and user factories (``package.module:factory``).

The factory contract (docs/models.md)::

    def factory(n_features: int, *, reconstruction: bool, **options) -> torch.nn.Module

``options`` is ``model.options`` from the config. ``forward(x)`` takes a float tensor of shape
(batch, n_features) and returns either the logits (shape (batch,) or (batch, 1)) or a dict with
``"logits"``, ``"reconstruction"`` (batch, n_features; needed when the reconstruction loss is on)
and ``"aux"`` (a dict of named scalar loss terms, weighted by ``training.loss.components``).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Encoder of fully connected layers, a one-logit classifier head and, for pretraining, a
    decoder head that reconstructs the input from the encoding."""

    def __init__(self, n_features: int, hidden: list[int], dropout: float = 0.1,
                 activation: str = "relu", reconstruction: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, 1)
        self.decoder = nn.Linear(width, n_features) if reconstruction else None

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        encoded = self.encoder(x)
        out: dict[str, Any] = {"logits": self.classifier(encoded).squeeze(-1)}
        if self.decoder is not None:
            out["reconstruction"] = self.decoder(encoded)
        return out


def build_model(cfg: ModelConfig, n_features: int, reconstruction: bool) -> nn.Module:
    if cfg.name == "mlp":
        unknown = set(cfg.options) - {"hidden", "dropout", "activation"}
        if unknown:
            raise ConfigError(f"model.options: the built-in mlp takes no option "
                              f"{sorted(unknown)[0]!r} (use model.hidden/dropout/activation)")
        return MLP(n_features, list(cfg.hidden), cfg.dropout, cfg.activation, reconstruction)
    module_name, _, attr = cfg.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name {cfg.name!r}: cannot import {module_name!r} ({exc})",
                          hint="is the package installed or in the bundle?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name {cfg.name!r}: {module_name} has no callable {attr!r}")
    try:
        model = factory(n_features, reconstruction=reconstruction, **cfg.options)
    except TypeError as exc:
        raise ConfigError(f"model.name {cfg.name!r}: factory call failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name {cfg.name!r}: factory returned "
                          f"{type(model).__name__}, not a torch.nn.Module")
    return model


def normalize_output(out: Any) -> dict[str, Any]:
    """Any allowed model output -> ``{"logits": (B,), "reconstruction"?: ..., "aux": {...}}``."""
    if isinstance(out, torch.Tensor):
        out = {"logits": out}
    elif not isinstance(out, dict) or "logits" not in out:
        raise TypeError("a model's forward must return logits or a dict with 'logits'")
    logits = out["logits"]
    if logits.dim() == 2 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    if logits.dim() != 1:
        raise TypeError(f"model logits must have shape (batch,) or (batch, 1), got "
                        f"{tuple(logits.shape)}")
    return {"logits": logits, "reconstruction": out.get("reconstruction"),
            "aux": dict(out.get("aux") or {})}
