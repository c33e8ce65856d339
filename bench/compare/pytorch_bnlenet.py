#!/usr/bin/env python3
"""BNLeNet on Fashion-MNIST in PyTorch eager: the baseline for ``normlab train``.

What it measures
----------------
The chapter's recipe (d2l "Batch Normalization", PyTorch tab) written the way
a PyTorch user would write it to run fast on the CPU:

* Fashion-MNIST read once from the gzip IDX files with numpy, scaled to
  [0, 1] float32, shape (N, 1, 28, 28), held in memory as tensors;
* every epoch a ``torch.randperm`` with its own seeded ``torch.Generator``;
  each batch is the next ``--batch-size`` (default 128) slice of that index
  permutation, gathered from the preloaded tensors (``x[idx]``);
* BNLeNet (``--model bn-lenet``) or LeNet without BN (``--model lenet``) as
  ``nn.Sequential`` held in the attribute ``net`` (so the ``state_dict`` keys
  are those of ``normlab``'s checkpoints), Xavier-uniform conv/linear weights,
  PyTorch's default biases;
* ``--bn builtin``: ``nn.BatchNorm2d`` / ``nn.BatchNorm1d``;
  ``--bn scratch``: the chapter's hand-written ``batch_norm`` function and
  ``BatchNorm`` module (eps 1e-5, momentum 0.1, biased variance for the
  moving average; prediction mode detected with ``torch.is_grad_enabled()``);
* plain SGD (``--lr`` 0.1), mean cross-entropy, ``--epochs`` (10);
* after every epoch, evaluation in eval mode under ``torch.no_grad`` on the
  10,000 test images in batches of 1000.

``train_seconds`` is the wall time (``time.perf_counter``) of one epoch's
training loop only (shuffle, forward, loss, zero_grad, backward, step and the
running loss/accuracy sums), without evaluation; ``eval_seconds`` is the
evaluation. As in ``normlab``, a last training batch of a single example is
skipped for the BN models (PyTorch's BatchNorm1d would raise).

Threads: ``--threads N`` (default 2) calls ``torch.set_num_threads(N)`` and
``torch.set_num_interop_threads(1)`` before any work.

Output
------
The same JSON lines as ``normlab train --json``: one object per epoch

    {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
     "train_seconds", "eval_seconds"}

and a last line

    {"summary": true, "epochs", "train_loss", "train_acc", "val_loss",
     "val_acc", "train_seconds_per_epoch" (median over epochs),
     "train_examples_per_sec" (training examples / median epoch time),
     "total_seconds", "out": null, "recompute_stats": null,
     "impl": "pytorch", "model", "bn", "torch_version", "threads"}

Run (from the repository root)
------------------------------

    venv/bin/python bench/compare/pytorch_bnlenet.py --bn builtin
    venv/bin/python bench/compare/pytorch_bnlenet.py --bn scratch
    # quick smoke test
    venv/bin/python bench/compare/pytorch_bnlenet.py --epochs 1 \
        --limit-train 2048 --limit-val 1000

Only torch, numpy and the standard library are used.
"""

import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------
# Threads


def set_threads(n):
    """torch.set_num_threads(n) and one inter-op thread (before any work)."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        # already set, or parallel work already started: not fatal for timing
        pass


# --------------------------------------------------------------------------
# Data


def _open_idx(data_dir, stem):
    for name, opener in ((stem + ".gz", gzip.open), (stem, open)):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            with opener(path, "rb") as f:
                return path, f.read()
    raise SystemExit(
        f"error: neither {stem}.gz nor {stem} found in {data_dir} "
        "(pass --data-dir DIR holding the four Fashion-MNIST IDX files)"
    )


def read_idx(data_dir, stem, magic):
    """Reads one IDX file (gzip or plain) into a numpy uint8 array."""
    path, raw = _open_idx(data_dir, stem)
    got = int.from_bytes(raw[0:4], "big")
    if got != magic:
        raise SystemExit(f"error: {path}: IDX magic {got:#010x}, expected {magic:#010x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - offset != count:
        raise SystemExit(f"error: {path}: {len(raw) - offset} data bytes, expected {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(data_dir):
    """(x_train, y_train, x_test, y_test): float32 (N,1,28,28) in [0,1], int64 labels."""
    def images(stem):
        a = read_idx(data_dir, stem, 0x00000803).astype(np.float32)
        a /= 255.0  # in place: no second full-size temporary
        return torch.from_numpy(a.reshape(-1, 1, 28, 28))

    def labels(stem):
        return torch.from_numpy(read_idx(data_dir, stem, 0x00000801).astype(np.int64))

    return (
        images(FILES["train_images"]),
        labels(FILES["train_labels"]),
        images(FILES["test_images"]),
        labels(FILES["test_labels"]),
    )


# --------------------------------------------------------------------------
# The chapter's scratch batch norm (PyTorch tab, verbatim apart from comments)


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # Use is_grad_enabled to determine whether we are in training mode
    if not torch.is_grad_enabled():
        # In prediction mode, use the mean and variance of the moving average
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            # Fully connected layer: mean and variance over the feature dimension
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # 2-D convolution: mean and variance per channel (axis=1), keeping
            # the shape of X for broadcasting
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        # In training mode, use the current mean and variance
        X_hat = (X - mean) / torch.sqrt(var + eps)
        # Update the mean and variance using the moving average
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var
    Y = gamma * X_hat + beta  # Scale and shift
    return Y, moving_mean.data, moving_var.data


class BatchNorm(nn.Module):
    # num_features: outputs of a fully connected layer or output channels of
    # a convolution. num_dims: 2 for fully connected, 4 for convolution
    def __init__(self, num_features, num_dims):
        super().__init__()
        if num_dims == 2:
            shape = (1, num_features)
        else:
            shape = (1, num_features, 1, 1)
        # Scale and shift parameters, initialised to 1 and 0
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        # Variables that are not model parameters, initialised to 0 and 1
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        # If X is not in main memory, copy moving_mean and moving_var to its device
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        # Save the updated moving_mean and moving_var
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean,
            self.moving_var, eps=1e-5, momentum=0.1)
        return Y


# --------------------------------------------------------------------------
# Models


class LeNetFamily(nn.Module):
    """BNLeNet / LeNet as ``self.net = nn.Sequential(...)`` (normlab's checkpoint names)."""

    def __init__(self, model="bn-lenet", bn="builtin"):
        super().__init__()
        if model not in ("bn-lenet", "lenet"):
            raise ValueError(f"unknown model {model!r}")
        if bn not in ("builtin", "scratch"):
            raise ValueError(f"unknown bn {bn!r}")

        def norm(c, dims):
            if model == "lenet":
                return []
            if bn == "scratch":
                return [BatchNorm(c, num_dims=dims)]
            return [nn.BatchNorm2d(c) if dims == 4 else nn.BatchNorm1d(c)]

        layers = (
            [nn.Conv2d(1, 6, kernel_size=5)] + norm(6, 4) + [nn.Sigmoid(), nn.AvgPool2d(2, 2)]
            + [nn.Conv2d(6, 16, kernel_size=5)] + norm(16, 4) + [nn.Sigmoid(), nn.AvgPool2d(2, 2)]
            + [nn.Flatten(), nn.Linear(256, 120)] + norm(120, 2) + [nn.Sigmoid()]
            + [nn.Linear(120, 84)] + norm(84, 2) + [nn.Sigmoid()]
            + [nn.Linear(84, 10)]
        )
        self.net = nn.Sequential(*layers)
        # d2l's init_cnn: Xavier-uniform weights; biases keep PyTorch's default
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x):
        return self.net(x)


def build_model(model="bn-lenet", bn="builtin", seed=0):
    torch.manual_seed(seed)
    return LeNetFamily(model, bn)


# --------------------------------------------------------------------------
# Training and evaluation


def train_epoch(net, opt, x, y, batch_size, gen, has_bn):
    """One epoch; returns (mean loss, accuracy, seconds of the training loop)."""
    n = x.shape[0]
    start = time.perf_counter()
    net.train()
    perm = torch.randperm(n, generator=gen)
    loss_sum, correct, seen = 0.0, 0, 0
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        xb, yb = x[idx], y[idx]  # gather one batch from the preloaded tensors
        m = xb.shape[0]
        if m == 1 and i > 0 and has_bn:
            continue  # a batch of one cannot be batch-normalized (as normlab)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = loss.item()
        if lv != lv or lv in (float("inf"), float("-inf")):
            raise SystemExit(f"error: training diverged (loss {lv}); try a smaller --lr")
        loss_sum += lv * m
        correct += int((logits.argmax(dim=1) == yb).sum())
        seen += m
    return loss_sum / seen, correct / seen, time.perf_counter() - start


def evaluate(net, x, y, batch_size=1000):
    """(mean loss, accuracy, seconds) in eval mode under torch.no_grad."""
    start = time.perf_counter()
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            logits = net(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    n = x.shape[0]
    return loss_sum / n, correct / n, time.perf_counter() - start


def positive_int(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="BNLeNet on Fashion-MNIST in PyTorch eager; prints normlab-style JSON lines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=["bn-lenet", "lenet"], default="bn-lenet")
    p.add_argument("--bn", choices=["builtin", "scratch"], default="builtin",
                   help="nn.BatchNorm2d/1d or the chapter's hand-written BatchNorm")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--limit-train", type=positive_int, default=None)
    p.add_argument("--limit-val", type=positive_int, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    set_threads(args.threads)

    x_train, y_train, x_test, y_test = load_fashion_mnist(args.data_dir)
    if args.limit_train is not None:
        x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    if args.limit_val is not None:
        x_test, y_test = x_test[:args.limit_val], y_test[:args.limit_val]

    net = build_model(args.model, args.bn, args.seed)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    has_bn = args.model != "lenet"

    history = []
    for epoch in range(1, args.epochs + 1):
        tl, ta, ts = train_epoch(net, opt, x_train, y_train, args.batch_size, gen, has_bn)
        vl, va, es = evaluate(net, x_test, y_test)
        m = {"epoch": epoch, "train_loss": tl, "train_acc": ta, "val_loss": vl,
             "val_acc": va, "train_seconds": ts, "eval_seconds": es}
        history.append(m)
        print(json.dumps(m), flush=True)

    last = history[-1]
    per_epoch = statistics.median(m["train_seconds"] for m in history)
    summary = {
        "summary": True,
        "epochs": len(history),
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "val_loss": last["val_loss"],
        "val_acc": last["val_acc"],
        "train_seconds_per_epoch": per_epoch,
        "train_examples_per_sec": x_train.shape[0] / per_epoch,
        "total_seconds": time.perf_counter() - started,
        "out": None,
        "recompute_stats": None,
        "impl": "pytorch",
        "model": args.model,
        "bn": args.bn if has_bn else None,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
