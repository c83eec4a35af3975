"""A Lightning script: a small GRU reads sequences of tokens and says whether the token
``A`` occurs more often than ``B`` (a binary sequence classifier), on data it generates
itself. It runs alone (``python examples/lightning/train.py``), under torchrun (Lightning's
DDP picks torchrun's processes up), and as an hpcrun job
(``hpcrun submit examples/lightning/train.py``).

The lines marked ``# hpcrun`` add hpcrun's diagnostics, checkpoints that survive
preemption and the final evaluation; without them it trains the same.
"""

from __future__ import annotations

import argparse
import os
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hpcrun.track as track  # hpcrun
from hpcrun.track.lightning import HpcrunCallback, last_checkpoint  # hpcrun

VOCAB = 8  # token 0 is "A", token 1 is "B"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=3072)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def sequences(n: int, length: int, generator: torch.Generator) -> TensorDataset:
    tokens = torch.randint(VOCAB, (n, length), generator=generator)
    labels = ((tokens == 0).sum(1) > (tokens == 1).sum(1)).float()
    return TensorDataset(tokens, labels)


class Counter(L.LightningModule):
    def __init__(self, lr: float, hidden: int = 32):
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, 16)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(self.embed(tokens))
        return self.head(last[-1]).squeeze(1)

    def training_step(self, batch, batch_idx):
        tokens, labels = batch
        loss = F.binary_cross_entropy_with_logits(self(tokens), labels)
        self.log("train_loss", loss, on_epoch=True, sync_dist=True)
        return loss

    def _evaluate(self, batch, prefix: str):
        tokens, labels = batch
        logits = self(tokens)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        self.log(f"{prefix}_loss", loss, sync_dist=True)
        self.log(f"{prefix}_accuracy", accuracy, sync_dist=True)
        return {"loss": loss, "probs": logits.sigmoid(), "labels": labels}  # hpcrun: probs

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    L.seed_everything(args.seed, verbose=False)
    data = torch.Generator().manual_seed(args.seed)
    train, val, test = (sequences(n, args.length, data)
                        for n in (args.samples, 768, 768))
    loader = {"batch_size": args.batch_size, "num_workers": 0}
    # under torchrun, Lightning takes its processes; alone, one process
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    nodes = max(int(os.environ.get("WORLD_SIZE", "1")) // devices, 1)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="auto", devices=devices, num_nodes=nodes,
        strategy="ddp" if devices * nodes > 1 else "auto", gradient_clip_val=5.0,
        enable_progress_bar=False, enable_model_summary=False, logger=False,
        enable_checkpointing=False,
        callbacks=[HpcrunCallback(config=vars(args))])  # hpcrun
    model = Counter(args.lr)
    trainer.fit(model, DataLoader(train, shuffle=True, **loader), DataLoader(val, **loader),
                ckpt_path=last_checkpoint())  # hpcrun: resume after a requeue
    trainer.test(model, DataLoader(test, **loader), verbose=False)
    track.shutdown()  # hpcrun: flush, end the process group, exit without gloo's teardown


if __name__ == "__main__":
    main()
