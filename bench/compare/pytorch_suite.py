#!/usr/bin/env python3
"""PyTorch twins of `normlab bench --suite`: the same networks, batches and
input shapes, one SGD training step (forward, cross-entropy, backward,
update) timed as a median over repeated steps.

The networks (see crates/cli/src/bench/suite.rs for normlab's side):

  bn-lenet   the chapter's BNLeNet, batch 128, 1x28x28
  vgg-bn     3x3 convs with padding 1 (32, 32, 64, 64, 128 channels), BN and
             ReLU after each, 2x2 max-pool after the 2nd, 4th and 5th;
             Linear(256)-BN1d-ReLU-Linear(10); batch 128, 1x28x28
  resnet-bn  a small ResNet on 3x32x32: a 3x3 stem of 16 channels, then
             basic blocks (conv-BN-ReLU-conv-BN plus the shortcut, then
             ReLU) of 16, 32 (stride 2) and 64 (stride 2) channels, with a
             1x1 conv + BN shortcut where the shape changes; global average
             pool, Linear(10); batch 64
  mlp-bn     the BN paper's MNIST MLP: 3 hidden layers of 100 sigmoid units,
             BN after each affine layer; batch 60, 784 inputs

Prints one JSON object per network on stdout:
{"network", "batch", "step_ms", "steps", "threads", "capability", "torch"}.

Run with the interpreter that has torch, e.g.
    venv/bin/python bench/compare/pytorch_suite.py --threads 2
and cap the instruction set as PyTorch does:
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 venv/bin/python ...
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn


def bn_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10),
    ), 128, (1, 28, 28)


def vgg_bn():
    layers, cin, side = [], 1, 28
    for channels, pool in [(32, False), (32, True), (64, False), (64, True), (128, True)]:
        layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2, 2))
            side //= 2
        cin = channels
    layers += [nn.Flatten(), nn.Linear(side * side * cin, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10)]
    return nn.Sequential(*layers), 128, (1, 28, 28)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a 1x1 conv + BN
    where the shape changes), then ReLU: normlab's Residual layer followed
    by ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def resnet_bn():
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        layers += [BasicBlock(cin, cout, stride), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers), 64, (3, 32, 32)


def mlp_bn():
    layers = [nn.Flatten()]
    width = 784
    for _ in range(3):
        layers += [nn.Linear(width, 100), nn.BatchNorm1d(100), nn.Sigmoid()]
        width = 100
    layers.append(nn.Linear(100, 10))
    return nn.Sequential(*layers), 60, (1, 28, 28)


NETWORKS = {"bn-lenet": bn_lenet, "vgg-bn": vgg_bn, "resnet-bn": resnet_bn, "mlp-bn": mlp_bn}


def time_step(name, budget, warmup):
    torch.manual_seed(0)
    net, batch, shape = NETWORKS[name]()
    net.train()
    x = torch.rand((batch,) + shape) * 2 - 1
    labels = torch.arange(batch) % 10
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), labels)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return batch, statistics.median(times) * 1e3, len(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed steps per network")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for name in a.networks.split(","):
        if name not in NETWORKS:
            sys.exit(f"error: unknown network {name!r}; choose from {', '.join(NETWORKS)}")
        batch, ms, steps = time_step(name, a.budget, a.warmup)
        print(json.dumps({
            "network": name, "batch": batch, "step_ms": ms, "steps": steps, "threads": a.threads,
            "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
