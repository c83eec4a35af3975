"""The loss: named components summed with weights, optionally learned uncertainty weights.

Components: ``classification`` (bce or focal, with pos_weight and label smoothing),
``reconstruction`` (MSE of the model's reconstruction of its input) and any scalar the model
returns under ``aux``. With ``learned_weights`` each component i gets a log-variance s_i and
contributes ``w_i * exp(-s_i) * L_i + s_i`` (Kendall et al., 2018).

``TrainModule`` puts the model and the loss in one module so that DDP wraps both: learned
weights are then all-reduced with the model's gradients and every rank stays identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..errors import ConfigError
from .models import normalize_output


def classification_loss(logits: torch.Tensor, target: torch.Tensor,
                        cfg: LossConfig) -> torch.Tensor:
    target = target.to(logits.dtype)
    if cfg.label_smoothing:
        target = target * (1.0 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
    if cfg.type == "bce":
        pos_weight = None
        if cfg.pos_weight is not None:
            pos_weight = torch.tensor(cfg.pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    # focal loss (Lin et al., 2017) on soft targets
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = bce * (1 - p_t).pow(cfg.focal_gamma)
    if cfg.focal_alpha is not None:
        alpha_t = cfg.focal_alpha * target + (1 - cfg.focal_alpha) * (1 - target)
        loss = alpha_t * loss
    if cfg.pos_weight is not None:
        loss = loss * (1 + (cfg.pos_weight - 1) * target)
    return loss.mean()


class TrainModule(nn.Module):
    """model + loss. ``forward(x, y)`` -> (total loss, raw component values (C,), logits)."""

    def __init__(self, model: nn.Module, cfg: LossConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.components = [name for name, weight in cfg.components.items() if weight > 0]
        # a frozen parameter rather than a buffer: DDP would broadcast a buffer every step
        self.weights = nn.Parameter(torch.tensor([cfg.components[c] for c in self.components]),
                                    requires_grad=False)
        self.log_vars = (nn.Parameter(torch.zeros(len(self.components)))
                         if cfg.learned_weights else None)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        out = normalize_output(self.model(x))
        logits = out["logits"]
        values = []
        for name in self.components:
            if name == "classification":
                values.append(classification_loss(logits.float(), y, self.cfg))
            elif name == "reconstruction":
                recon = out["reconstruction"]
                if recon is None:
                    raise ConfigError("loss component 'reconstruction' needs a model with a "
                                      "reconstruction output (see docs/models.md)")
                values.append(F.mse_loss(recon.float(), x.float()))
            elif name in out["aux"]:
                values.append(out["aux"][name].float().reshape(()))
            else:
                raise ConfigError(
                    f"training.loss.components: {name!r} is neither a built-in component "
                    "(classification, reconstruction) nor a term the model returns under 'aux'"
                )
        raw = torch.stack(values)
        if self.log_vars is not None:
            total = (self.weights * torch.exp(-self.log_vars) * raw + self.log_vars).sum()
        else:
            total = (self.weights * raw).sum()
        return total, raw.detach(), logits.detach()

    def effective_weights(self) -> tuple[list[float], list[float]] | None:
        """(weight_c, sigma_c) per component when weights are learned."""
        if self.log_vars is None:
            return None
        s = self.log_vars.detach().float().cpu()
        weights = (self.weights.cpu() * torch.exp(-s)).tolist()
        sigmas = torch.exp(0.5 * s).tolist()
        return weights, sigmas
