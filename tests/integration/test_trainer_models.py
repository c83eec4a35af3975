"""User models under DDP: a data-dependent branch trains with find_unused_parameters."""

from __future__ import annotations

import pytest
from conftest import run_trainer, write_config

pytestmark = pytest.mark.slow

ROUTED = '''\
import torch
from torch import nn


class Routed(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.a = nn.Linear(n_features, 1)
        self.b = nn.Linear(n_features, 1)

    def forward(self, x):
        expert = self.a if x[:, 0].mean() > 0 else self.b
        return expert(x)


def routed(n_features, *, reconstruction):
    return Routed(n_features)
'''


def test_a_data_dependent_branch_trains_on_two_ranks_with_find_unused_parameters(tmp_path):
    (tmp_path / "routed_models.py").write_text(ROUTED)
    cfg = write_config(tmp_path / "routed.yaml", """\
experiment: routed
data: {rows: 600, features: 6, informative: 3}
model: {name: "routed_models:routed"}
training: {epochs: 2, batch_size: 16, find_unused_parameters: true}
""")
    proc = run_trainer(tmp_path, "--config", str(cfg), nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not trained in this stage" not in proc.stdout + proc.stderr
