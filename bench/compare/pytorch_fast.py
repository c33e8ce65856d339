#!/usr/bin/env python3
"""The PyTorch twin of `normlab train --preset fast`: the same network and
recipe, read from the preset's own file (crates/cli/presets/fast.toml), so
the two cannot drift apart. Timed as normlab times a run: wall time from the
first training step, with the test-set evaluation after every epoch
included; it also says when the test accuracy first reached --target.

The recipe, as normlab runs it: conv(bias=False)-BN-ReLU stages, max-pools
and linear layers (a batch norm after a linear one is BatchNorm1d) as the
file lists them, with PyTorch's default initialisation; SGD with Nesterov
momentum and weight decay on every parameter; OneCycleLR(max_lr=lr,
pct_start=0.3, cycle_momentum=False) stepped once per batch; cross-entropy
with label smoothing; each training image flipped horizontally with
probability 1/2; batches drawn from a fresh shuffle each epoch, the last
partial batch kept.

Prints one line per epoch on stderr and, at the end, one JSON object:
{"seed", "threads", "epochs", "accuracy": [...], "seconds": [...],
 "seconds_to_target", "target", "torch", "recipe"}.

Run with the interpreter that has torch (not a dependency of normlab):
    venv/bin/python bench/compare/pytorch_fast.py --threads 2 --seed 0
Options given replace the preset's values (e.g. --epochs 10). The IDX files
are read from --data (default: Debian's dataset-fashion-mnist).
"""

import argparse
import gzip
import json
import os
import sys
import time
import tomllib

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "cli", "presets", "fast.toml")


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


def network(layers, classes):
    """The preset's [[layers]] as an nn.Sequential, for 1x28x28 inputs."""
    out, channels, side, features = [], 1, 28, None
    for layer in layers:
        kind = layer["type"]
        if kind == "conv2d":
            k, pad, stride = layer["kernel"], layer.get("padding", 0), layer.get("stride", 1)
            out.append(nn.Conv2d(channels, layer["out_channels"], k, stride=stride, padding=pad,
                                 bias=layer.get("bias", True)))
            channels, side = layer["out_channels"], (side + 2 * pad - k) // stride + 1
        elif kind == "batch_norm":
            out.append(nn.BatchNorm2d(channels) if features is None else nn.BatchNorm1d(features))
        elif kind == "relu":
            out.append(nn.ReLU())
        elif kind == "gelu":
            out.append(nn.GELU())
        elif kind == "max_pool":
            k = layer["kernel"]
            out.append(nn.MaxPool2d(k, layer.get("stride", k)))
            side = (side - k) // layer.get("stride", k) + 1
        elif kind == "flatten":
            out.append(nn.Flatten())
            features = channels * side * side
        elif kind == "linear":
            last = layer is layers[-1]
            width = classes if last else layer["out_features"]
            out.append(nn.Linear(features, width, bias=layer.get("bias", True)))
            features = width
        else:
            sys.exit(f"pytorch_fast.py: layer type {kind!r} of the preset is not mapped here; add it")
    return nn.Sequential(*out)


def main():
    with open(PRESET, "rb") as f:
        preset = tomllib.load(f)
    t = preset["train"]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=t["epochs"])
    p.add_argument("--batch-size", type=int, default=t["batch_size"])
    p.add_argument("--lr", type=float, default=t["lr"], help="max_lr of the one-cycle schedule")
    p.add_argument("--target", type=float, default=0.93)
    args = p.parse_args()
    if t.get("schedule") != "one-cycle" or t.get("augment") not in ("flip", "none", None):
        sys.exit("pytorch_fast.py: the preset's schedule or augmentation changed; teach this twin the new one")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load(args.data, "train")
    xte, yte = load(args.data, "test")
    net = network(preset["layers"], 10)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=t.get("momentum", 0.0),
                          nesterov=t.get("nesterov", False), weight_decay=t.get("weight_decay", 0.0))
    steps = (len(xtr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps * args.epochs,
                                                pct_start=0.3, cycle_momentum=False)
    smoothing, flip = t.get("label_smoothing", 0.0), t.get("augment") == "flip"

    accs, secs, reached = [], [], None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for b in range(steps):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x = xtr[idx]
            if flip:
                mask = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
            loss = F.cross_entropy(net(x), ytr[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        correct = 0
        with torch.inference_mode():
            for b in range(0, len(xte), 500):
                correct += (net(xte[b:b + 500]).argmax(1) == yte[b:b + 500]).sum().item()
        acc = correct / len(xte)
        elapsed = time.perf_counter() - start
        accs.append(acc)
        secs.append(elapsed)
        if reached is None and acc >= args.target:
            reached = elapsed
        print(f"epoch {epoch + 1}: test acc {acc:.4f}, {elapsed:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps({
        "seed": args.seed, "threads": args.threads, "epochs": args.epochs, "accuracy": accs, "seconds": secs,
        "seconds_to_target": reached, "target": args.target, "torch": torch.__version__,
        "recipe": {k: v for k, v in t.items()},
    }))


if __name__ == "__main__":
    main()
