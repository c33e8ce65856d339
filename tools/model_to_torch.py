#!/usr/bin/env python3
"""Build the PyTorch nn.Sequential a normlab model file describes, and
strict-load a normlab checkpoint of it.

    /path/to/torchenv/bin/python tools/model_to_torch.py examples/models/vgg-small.toml \\
        runs/vgg-small-.../model.safetensors [--data-dir tests/data/fashion-mnist-subset --limit 200]

The model file (TOML, see README "Your own network") lists layers in
PyTorch's terms; this script makes a module whose attribute ``net`` is
``nn.Sequential(*layers)`` (a ``residual`` layer is a module with ``body``
and ``shortcut``), so the state names are normlab's (``net.0.weight``),
and loads the checkpoint with ``load_state_dict(strict=True)``. Without a
model file argument (``-``) the description is read from the checkpoint's
``normlab.spec`` metadata. With ``--data-dir`` it evaluates on the test
images (IDX, as tools/check_checkpoint.py reads them) and prints the
accuracy, to compare with ``normlab eval --limit N``.

Exit status: 0 success, 1 a mismatch, 2 a bad argument or file.
"""

import argparse
import gzip
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn



class Fail(Exception):
    """A bad argument or file: exit status 2."""


def test_split(dir_, limit):
    """The first `limit` test images (uint8, N x H x W) and labels of an IDX directory."""
    out = []
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        found = [p for p in (Path(dir_) / f"{stem}.gz", Path(dir_) / stem) if p.is_file()]
        if not found:
            raise Fail(f"{dir_}: no {stem}(.gz)")
        raw = found[0].read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        out.append(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)[:limit])
    return out


DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, read with numpy (no safetensors package needed)."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, t in header.items():
        if t["dtype"] not in DTYPES:
            raise Fail(f"{path}: tensor '{name}' has dtype {t['dtype']}")
        a, z = t["data_offsets"]
        values = np.frombuffer(data[a:z], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
        tensors[name] = torch.from_numpy(values.copy())
    return tensors, meta


class Residual(nn.Module):
    """body(x) + shortcut(x), the identity when there is no shortcut."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class Net(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.net = layers

    def forward(self, x):
        return self.net(x)


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.FrozenBatchNorm2d, for when torchvision is not
    installed: the same buffers (weight, bias, running_mean, running_var)
    and the same forward."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = self.weight.reshape(shape) * (self.running_var.reshape(shape) + self.eps).rsqrt()
        return x * scale + (self.bias.reshape(shape) - self.running_mean.reshape(shape) * scale)


def frozen_batch_norm(channels, eps):
    try:
        from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozen
        return TorchvisionFrozen(channels, eps=eps)
    except ImportError:
        return FrozenBatchNorm2d(channels, eps)


def sequential(specs, shape):
    """nn.Sequential of `specs` for one example of `shape`; returns it and the output shape."""
    layers = []
    for i, s in enumerate(specs):
        kind = s.get("type")
        if kind == "conv2d":
            k, st, p = s["kernel"], s.get("stride", 1), s.get("padding", 0)
            layers.append(nn.Conv2d(shape[0], s["out_channels"], k, st, p, bias=s.get("bias", True)))
            shape = [s["out_channels"], (shape[1] + 2 * p - k) // st + 1, (shape[2] + 2 * p - k) // st + 1]
        elif kind == "linear":
            layers.append(nn.Linear(shape[0], s["out_features"], bias=s.get("bias", True)))
            shape = [s["out_features"]]
        elif kind in ("batch_norm", "batch_norm1d", "batch_norm2d"):
            cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            m = s.get("momentum", 0.1)
            layers.append(cls(shape[0], eps=s.get("eps", 1e-5), momentum=None if m == "none" else m,
                              affine=s.get("affine", True), track_running_stats=s.get("track_running_stats", True)))
        elif kind == "layer_norm":
            k = s.get("normalized_dims") or len(shape)
            layers.append(nn.LayerNorm(shape[len(shape) - k:], eps=s.get("eps", 1e-5),
                                       elementwise_affine=s.get("elementwise_affine", True)))
        elif kind == "group_norm":
            layers.append(nn.GroupNorm(s["num_groups"], shape[0], eps=s.get("eps", 1e-5), affine=s.get("affine", True)))
        elif kind == "rms_norm":
            k = s.get("normalized_dims") or len(shape)
            layers.append(nn.RMSNorm(shape[len(shape) - k:], eps=s.get("eps"),
                                     elementwise_affine=s.get("elementwise_affine", True)))
        elif kind == "instance_norm":
            cls = nn.InstanceNorm2d if len(shape) == 3 else nn.InstanceNorm1d
            layers.append(cls(shape[0], eps=s.get("eps", 1e-5), momentum=s.get("momentum", 0.1),
                              affine=s.get("affine", False), track_running_stats=s.get("track_running_stats", False)))
        elif kind == "frozen_batch_norm":
            layers.append(frozen_batch_norm(shape[0], s.get("eps", 1e-5)))
        elif kind in ("ghost_batch_norm", "batch_renorm"):
            raise Fail(f"layer {i}: {kind} has no PyTorch module (normlab's own layer); "
                       "its prediction-mode map is batch norm's with the same state, so for inference "
                       "replace it by batch_norm in the model file")
        elif kind in ("relu", "silu", "sigmoid", "tanh", "flatten"):
            layers.append({"relu": nn.ReLU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                           "flatten": nn.Flatten}[kind]())
            if kind == "flatten":
                n = 1
                for d in shape:
                    n *= d
                shape = [n]
        elif kind == "leaky_relu":
            layers.append(nn.LeakyReLU(s.get("negative_slope", 0.01)))
        elif kind == "gelu":
            layers.append(nn.GELU(approximate=s.get("approximate", "none")))
        elif kind in ("max_pool", "max_pool2d", "avg_pool", "avg_pool2d"):
            k = s["kernel"]
            st = s.get("stride") or k
            layers.append((nn.MaxPool2d if kind.startswith("max") else nn.AvgPool2d)(k, st))
            shape = [shape[0], (shape[1] - k) // st + 1, (shape[2] - k) // st + 1]
        elif kind == "dropout":
            layers.append(nn.Dropout(s.get("p", 0.5)))
        elif kind == "residual":
            body, out = sequential(s["body"], shape)
            shortcut = sequential(s["shortcut"], shape)[0] if s.get("shortcut") else None
            layers.append(Residual(body, shortcut))
            shape = out
        else:
            raise Fail(f"layer {i}: unknown type '{kind}'")
    return nn.Sequential(*layers), shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_file", help="the model file (TOML), or - to read the checkpoint's normlab.spec")
    ap.add_argument("checkpoint")
    ap.add_argument("--data-dir")
    ap.add_argument("--limit", type=int)
    a = ap.parse_args()
    try:
        tensors, meta = read_safetensors(a.checkpoint)
        # a training checkpoint's optimizer state is not the model's
        tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        if a.model_file == "-":
            if "normlab.spec" not in meta:
                raise Fail(f"{a.checkpoint}: no normlab.spec in the metadata; pass the model file")
            spec = json.loads(meta["normlab.spec"])
        else:
            spec = tomllib.loads(Path(a.model_file).read_text())
        shape = spec.get("input") or json.loads(meta.get("normlab.spec", "{}")).get("input") or [1, 28, 28]
        layers, out = sequential(spec["layers"], list(shape))
        model = Net(layers)
        model.load_state_dict(tensors, strict=True)
        model.eval()
        print(f"strict load ok: {len(model.state_dict())} tensors, output {out}")
        if a.data_dir:
            images, labels = test_split(a.data_dir, a.limit)
            n = len(labels)
            x = torch.tensor(images[:n], dtype=torch.float32).reshape(n, *shape) / 255.0
            with torch.no_grad():
                pred = model(x).argmax(1).numpy()
            print(f"accuracy {float((pred == labels[:n]).mean()):.4f} on {n} test images")
    except (Fail, OSError, KeyError, RuntimeError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
