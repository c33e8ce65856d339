#!/usr/bin/env python3
"""A fast Fashion-MNIST recipe in PyTorch, for choosing normlab's coming
`train --preset fast` (not in normlab yet): a conv-BN-ReLU-pool network, SGD
with Nesterov momentum, a one-cycle schedule (linear warm-up, linear decay),
label smoothing and random crops, timed as normlab times a run (wall time
from the first training step, the test-set evaluation after every epoch
included), with the time it first reaches --target.

Prints one line per epoch and, at the end, one JSON object:
{"seed", "threads", "epochs", "accuracy": [...], "seconds": [...],
 "seconds_to_target", "target", "torch"}.

Run with the interpreter that has torch, e.g.
    venv/bin/python bench/compare/pytorch_fast.py --threads 2 --seed 0
The IDX files are read from --data (default: Debian's dataset-fashion-mnist).
"""

import argparse
import gzip
import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(f"{data_dir}/{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(f"{data_dir}/{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def network(widths):
    """conv3x3-BN-ReLU-maxpool stages (28 -> 14 -> 7 -> 3), then Linear."""
    layers, cin, side = [], 1, 28
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
        cin, side = w, side // 2
    layers += [nn.Flatten(), nn.Linear(cin * side * side, 10)]
    return nn.Sequential(*layers)


def augment(x, padding, flip, gen):
    """Random crop of the zero-padded batch, one offset per image; random flip."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
        idx_n = torch.arange(n).view(n, 1, 1)
        x = padded[:, 0][idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].unsqueeze(1)
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--widths", default="24,48,96")
    p.add_argument("--lr", type=float, default=0.2, help="peak lr of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of steps warming up linearly from 0")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--crop-padding", type=int, default=2)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--target", type=float, default=0.93)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load(args.data, "train")
    xte, yte = load(args.data, "test")
    net = network([int(w) for w in args.widths.split(",")])
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if param.ndim == 1 else decay).append(param)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=args.momentum, nesterov=True,
    )
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    warm = max(1, int(args.warmup * total))

    def lr_at(step):
        # linear warm-up from 0 to the peak, then linear decay to 0
        if step < warm:
            return args.lr * step / warm
        return args.lr * max(0.0, (total - step) / (total - warm))

    accs, secs = [], []
    start = time.perf_counter()
    step = 0
    reached = None
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x = augment(xtr[idx], args.crop_padding, args.flip, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(net(x), ytr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        net.eval()
        correct = 0
        with torch.inference_mode():
            for b in range(0, len(xte), 1000):
                correct += (net(xte[b:b + 1000]).argmax(1) == yte[b:b + 1000]).sum().item()
        acc = correct / len(xte)
        t = time.perf_counter() - start
        accs.append(acc)
        secs.append(t)
        if reached is None and acc >= args.target:
            reached = t
        print(f"epoch {epoch + 1}: test acc {acc:.4f}, {t:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps({
        "seed": args.seed, "threads": args.threads, "epochs": args.epochs, "widths": args.widths,
        "accuracy": accs, "seconds": secs, "seconds_to_target": reached, "target": args.target,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
