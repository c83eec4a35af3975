"""One run of the plain PyTorch example's training loop (examples/pytorch/train.py: its model,
data and batch size), instrumented one way, printing each epoch's time as JSON:

  plain        no logging at all (clip_grad_norm_ as the script would)
  track        every hpcrun.track diagnostic: step (gradient norms, clipping), should_stop,
               observe, epoch, save
  tensorboard  SummaryWriter.add_scalar of the loss and the gradient norm every step
  wandb        wandb.log of the loss and the gradient norm every step (offline mode)
  lightning    the same model and data through a Lightning Trainer (its loop, no logger)

Used by ``make bench`` (tests/bench/run.py --only own); not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "pytorch"))
from train import WaveNet, predict, waveforms  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["plain", "track", "tensorboard", "wandb", "lightning"])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--samples", type=int, default=4096)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()
torch.set_num_threads(1)
data = torch.Generator().manual_seed(0)
x, y = waveforms(args.samples, 128, 0.6, data)
val_x, val_y = waveforms(1024, 128, 0.6, data)
torch.manual_seed(0)
model = WaveNet()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
work = Path(tempfile.mkdtemp())
os.chdir(work)
times: list[float] = []

if args.mode == "lightning":
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return optimizer

    class Clock(L.Callback):
        def on_train_epoch_start(self, *_):
            self.began = time.perf_counter()

        def on_validation_epoch_end(self, trainer, *_):
            if not trainer.sanity_checking:
                times.append(time.perf_counter() - self.began)

    # the plain loop takes batches by indexing tensors; a DataLoader with a batch sampler
    # that does the same keeps the data path alike
    class Batches(torch.utils.data.Sampler):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return -(-self.n // args.batch_size)

        def __iter__(self):
            return iter(torch.randperm(self.n).split(args.batch_size))

    train = TensorDataset(x, y)
    loader = DataLoader(train, batch_sampler=Batches(len(train)),
                        collate_fn=lambda items: items[0])
    train.__getitems__ = lambda idx: [(x[idx], y[idx])]  # one indexing per batch
    val = DataLoader(TensorDataset(val_x, val_y), batch_size=1024)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=5.0,
                        num_sanity_val_steps=0, callbacks=[Clock()])
    trainer.fit(Module(), loader, val)
    print(json.dumps(times))
    raise SystemExit(0)

run = writer = wandb = None
if args.mode == "track":
    import hpcrun.track as track

    run = track.init(model, name="bench", config=vars(args), epochs=args.epochs)
    run.resume(model=model, optimizer=optimizer)
elif args.mode == "tensorboard":
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(work / "tb"))
elif args.mode == "wandb":
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(work))
    import wandb

    wandb.init(project="bench", config=vars(args))

order = torch.Generator().manual_seed(1)
step = 0
for epoch in range(1, args.epochs + 1):
    began = time.perf_counter()
    for i in torch.randperm(len(x), generator=order).split(args.batch_size):
        loss = F.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run is not None:
            run.step(loss, clip=5.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            if writer is not None:
                writer.add_scalar("loss", loss.item(), step)
                writer.add_scalar("grad_norm", norm.item(), step)
            elif wandb is not None:
                wandb.log({"loss": loss.item(), "grad_norm": norm.item()}, step=step)
        optimizer.step()
        step += 1
        if run is not None and run.should_stop():
            run.exit_preempted()
    val_loss, probs = predict(model, val_x, val_y)
    if run is not None:
        accuracy = (probs.argmax(1) == val_y).float().mean().item()
        run.observe("val", probs, val_y)
        run.epoch(val_loss=val_loss, metrics={"accuracy": accuracy},
                  lr=optimizer.param_groups[0]["lr"])
    times.append(time.perf_counter() - began)  # checkpoints are not diagnostics: not timed
    if run is not None:
        run.save(epoch, model=model, optimizer=optimizer, best=True)
if run is not None:
    run.finish()
if writer is not None:
    writer.close()
if wandb is not None:
    wandb.finish()
print(json.dumps(times))
