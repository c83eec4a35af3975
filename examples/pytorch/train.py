"""A plain PyTorch training script: a small 1-D CNN that tells four kinds of noisy waveform
apart (sine, square, sawtooth, triangle), on data it generates itself. It runs alone
(``python examples/pytorch/train.py``), under torchrun (DDP on gloo or nccl), and as an
hpcrun job (``hpcrun submit examples/pytorch/train.py``).

The lines marked ``# hpcrun`` are all it takes to get hpcrun's diagnostics: per-epoch losses,
gradient norms, class separation, memory, checkpoints that survive preemption, the final
evaluation. Remove them and the script trains the same.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import hpcrun.track as track  # hpcrun

CLASSES = ("sine", "square", "sawtooth", "triangle")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096, help="training sequences")
    parser.add_argument("--length", type=int, default=128, help="points per sequence")
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nan-at-epoch", type=int, default=0,
                        help="make the loss NaN from this epoch on (to see the red flag)")
    return parser.parse_args()


def waveforms(n: int, length: int, noise: float, generator: torch.Generator):
    """``n`` noisy sequences of random frequency and phase, and their class."""
    labels = torch.randint(len(CLASSES), (n,), generator=generator)
    freq = 1.5 + 4.0 * torch.rand(n, 1, generator=generator)
    phase = torch.rand(n, 1, generator=generator)
    t = torch.linspace(0, 1, length)[None, :]
    cycle = (freq * t + phase) % 1.0
    shapes = torch.stack([torch.sin(2 * math.pi * cycle), torch.sign(cycle - 0.5),
                          2 * cycle - 1, 4 * (cycle - 0.5).abs() - 1])
    x = shapes[labels, torch.arange(n)] + noise * torch.randn(n, length, generator=generator)
    return x[:, None, :], labels


class WaveNet(nn.Module):
    def __init__(self, classes: int = len(CLASSES), width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512):
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    model.train()
    return F.cross_entropy(logits, y).item(), logits.softmax(dim=1)


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")

    data = torch.Generator().manual_seed(args.seed)  # the same data on every rank
    splits = {name: waveforms(n, args.length, args.noise, data)
              for name, n in (("train", args.samples), ("val", 1024), ("test", 1024))}
    # each rank takes every world-th sample
    x, y = (t[rank::world].to(device) for t in splits["train"])
    val_x, val_y = (t[rank::world].to(device) for t in splits["val"])
    test_x, test_y = (t[rank::world].to(device) for t in splits["test"])

    torch.manual_seed(args.seed)
    model = WaveNet().to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    run = track.init(model, config=vars(args), epochs=args.epochs)  # hpcrun
    start = run.resume(model=model, optimizer=optimizer)  # hpcrun
    best = math.inf
    if run.resumed_from:  # hpcrun
        best = run.resumed_from["extra"].get("best", math.inf)  # hpcrun
    order = torch.Generator().manual_seed(args.seed + rank)
    for epoch in range(start, args.epochs + 1):
        for i in torch.randperm(len(x), generator=order).split(args.batch_size):
            loss = F.cross_entropy(model(x[i]), y[i])
            if args.nan_at_epoch and epoch >= args.nan_at_epoch:
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.step(loss, clip=5.0)  # hpcrun: gradient norms, then clipping
            optimizer.step()
            if run.should_stop():  # hpcrun: SIGUSR1/SIGTERM, agreed by every rank
                run.exit_preempted()  # hpcrun: exit 75, resume from last.pt
        val_loss, probs = predict(model, val_x, val_y)
        accuracy = (probs.argmax(1) == val_y).float().mean().item()
        run.observe("val", probs, val_y)  # hpcrun
        run.epoch(val_loss=val_loss, metrics={"accuracy": accuracy},  # hpcrun
                  lr=optimizer.param_groups[0]["lr"])
        improved = val_loss < best
        best = min(best, val_loss)
        run.save(epoch, model=model, optimizer=optimizer, best=improved,  # hpcrun
                 extra={"best": best})
        if rank == 0:
            print(f"epoch {epoch}: val loss {val_loss:.4f}, accuracy {accuracy:.3f}", flush=True)

    _, probs = predict(model, test_x, test_y)
    run.evaluate("test", probs, test_y)  # hpcrun
    run.finish()  # hpcrun
    track.shutdown()  # hpcrun: flush, end the process group, exit without gloo's teardown


if __name__ == "__main__":
    main()
