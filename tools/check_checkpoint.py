#!/usr/bin/env python3
"""Check that PyTorch reads a normlab checkpoint as its own state_dict.

    /path/to/torchenv/bin/python tools/check_checkpoint.py runs/x/model.safetensors \\
        --data-dir /usr/share/datasets/fashion-mnist [--expect 0.8512]

Builds the PyTorch network that the checkpoint's metadata names
(``normlab.model`` and the ``normlab.network`` description), e.g. the
chapter's BNLeNet as a module whose attribute ``net`` is an nn.Sequential:

     0 Conv2d(1, 6, 5)    1 BatchNorm2d(6)     2 Sigmoid   3 AvgPool2d(2, 2)
     4 Conv2d(6, 16, 5)   5 BatchNorm2d(16)    6 Sigmoid   7 AvgPool2d(2, 2)
     8 Flatten            9 Linear(256, 120)  10 BatchNorm1d(120)  11 Sigmoid
    12 Linear(120, 84)   13 BatchNorm1d(84)   14 Sigmoid  15 Linear(84, 10)

(``lenet``: the same without the BN layers, indices 0 to 11), loads the file
with ``safetensors.torch.load_file`` and ``load_state_dict(strict=True)``,
reads the 10,000 test images itself (IDX, gzip-compressed or not), evaluates
in eval mode and prints the accuracy and mean cross-entropy. With
``--expect ACC`` it exits with status 1 unless |accuracy - ACC| < 1e-4
(and with ``--expect-loss LOSS`` unless |loss - LOSS| < 1e-4).

Exit status: 0 success, 1 a mismatch, 2 a bad argument or file.
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# the indices of the chapter's two networks, as normlab and PyTorch name them
BN_LENET_LAYOUT = [
    "Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d",
    "Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d",
    "Flatten", "Linear", "BatchNorm1d", "Sigmoid",
    "Linear", "BatchNorm1d", "Sigmoid", "Linear",
]
LENET_LAYOUT = [
    "Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid", "AvgPool2d",
    "Flatten", "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear",
]


class Fail(Exception):
    """A bad argument or file: exit status 2."""


class Net(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def default_network(model):
    """normlab's description of its ready-made models (for files without one)."""
    bn = {"Batch": {"config": {"eps": 1e-5, "affine": True, "track_running_stats": True}}}
    norms = {"bn-lenet": bn, "bn-lenet-scratch": bn, "lenet": "None", "ln-lenet": "Layer"}
    if model not in norms:
        raise Fail(f"unknown normlab.model '{model}'; expected one of {', '.join(norms)}")
    return {
        "norm": norms[model], "placement": "BeforeActivation", "norm_conv": True,
        "norm_fc": True, "bias_before_norm": True, "activation": "Sigmoid", "dropout": None,
    }


def build(network, state):
    """The nn.Sequential that normlab's LeNetConfig describes, in its order
    (mirrors src/models/lenet.rs). `state` (the loaded tensors) gives the
    shapes of LayerNorm parameters."""
    norm = network.get("norm", "None")
    placement = network.get("placement", "BeforeActivation")
    activation = network.get("activation", "Sigmoid")
    if placement not in ("BeforeActivation", "AfterActivation"):
        raise Fail(f"unknown placement '{placement}' in normlab.network")
    if activation not in ("Sigmoid", "ReLU"):
        raise Fail(f"unknown activation '{activation}' in normlab.network")
    has_norm = norm != "None"
    norm_conv = has_norm and network.get("norm_conv", True)
    norm_fc = has_norm and network.get("norm_fc", True)
    bias_before_norm = network.get("bias_before_norm", True)
    dropout = network.get("dropout")
    layers = []

    def norm_layer(features, conv):
        i = len(layers)
        if isinstance(norm, dict) and "Batch" in norm:
            cfg = norm["Batch"].get("config", {})
            if not cfg.get("track_running_stats", True):
                raise Fail("track_running_stats = false is not supported by this check")
            kind = nn.BatchNorm2d if conv else nn.BatchNorm1d
            return kind(features, eps=cfg.get("eps", 1e-5), affine=cfg.get("affine", True))
        if norm == "Layer":
            key = f"net.{i}.weight"
            if key not in state:
                raise Fail(f"layer norm at net.{i} but no tensor {key} in the checkpoint")
            return nn.LayerNorm(list(state[key].shape), eps=1e-5)
        raise Fail(f"unknown norm {norm!r} in normlab.network")

    def stage(affine, features, normed, conv):
        layers.append(affine)
        act = nn.Sigmoid() if activation == "Sigmoid" else nn.ReLU()
        if normed and placement == "BeforeActivation":
            layers.append(norm_layer(features, conv))
        layers.append(act)
        if normed and placement == "AfterActivation":
            layers.append(norm_layer(features, conv))

    conv_bias = bias_before_norm or not norm_conv
    fc_bias = bias_before_norm or not norm_fc
    stage(nn.Conv2d(1, 6, 5, bias=conv_bias), 6, norm_conv, True)
    layers.append(nn.AvgPool2d(2, 2))
    stage(nn.Conv2d(6, 16, 5, bias=conv_bias), 16, norm_conv, True)
    layers.append(nn.AvgPool2d(2, 2))
    layers.append(nn.Flatten())
    for fan_in, width in [(256, 120), (120, 84)]:
        stage(nn.Linear(fan_in, width, bias=fc_bias), width, norm_fc, False)
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(84, 10))
    return Net(layers)


def read_idx(dir_, stem, magic, ndim):
    for path in (dir_ / f"{stem}.gz", dir_ / stem):
        if path.is_file():
            break
    else:
        raise Fail(f"{dir_}: no {stem}.gz or {stem}; pass --data-dir with the Fashion-MNIST files")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise Fail(f"{path}: magic 0x{got:08x}, expected 0x{magic:08x}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise Fail(f"{path}: {data.size} bytes of data, the header says {dims}")
    return data.reshape(dims)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--expect", type=float, metavar="ACC",
                    help="fail unless the accuracy is within 1e-4 of ACC")
    ap.add_argument("--expect-loss", type=float, metavar="LOSS",
                    help="fail unless the mean cross-entropy is within 1e-4 of LOSS")
    ap.add_argument("--limit", type=int, metavar="N", help="the first N test images only")
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if not args.checkpoint.is_file():
        raise Fail(f"{args.checkpoint}: no such file")
    try:
        with safe_open(str(args.checkpoint), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(args.checkpoint))
    except Exception as e:  # safetensors raises several types
        raise Fail(f"{args.checkpoint}: not a safetensors file ({e})")
    model_name = meta.get("normlab.model")
    if model_name is None:
        raise Fail(f"{args.checkpoint}: no 'normlab.model' in the metadata; not written by normlab")
    network = json.loads(meta["normlab.network"]) if "normlab.network" in meta \
        else default_network(model_name)

    model = build(network, state)
    layout = [type(m).__name__ for m in model.net]
    expected_layout = {"bn-lenet": BN_LENET_LAYOUT, "lenet": LENET_LAYOUT}.get(model_name)
    is_default = network.get("placement", "BeforeActivation") == "BeforeActivation" \
        and network.get("activation", "Sigmoid") == "Sigmoid" and network.get("dropout") is None \
        and network.get("norm_conv", True) and network.get("norm_fc", True)
    if expected_layout is not None and is_default and layout != expected_layout:
        raise Fail(f"internal: built {layout}, expected {expected_layout}")

    # strict: every key of PyTorch's state_dict present, nothing extra,
    # same shapes (load_state_dict raises otherwise)
    # (load_state_dict would silently convert dtypes: check them first)
    wanted = model.state_dict()
    wrong_dtype = [f"{k}: {state[k].dtype}, PyTorch has {v.dtype}"
                   for k, v in wanted.items() if k in state and state[k].dtype != v.dtype]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        print(f"{args.checkpoint}: PyTorch's strict load_state_dict fails: {e}", file=sys.stderr)
        return 1
    if wrong_dtype:
        print(f"{args.checkpoint}: dtype mismatch: {'; '.join(wrong_dtype)}", file=sys.stderr)
        return 1
    model.eval()

    images = read_idx(args.data_dir, TEST_IMAGES, 0x00000803, 3)
    labels = read_idx(args.data_dir, TEST_LABELS, 0x00000801, 1)
    if len(images) != len(labels):
        raise Fail(f"{args.data_dir}: {len(images)} test images but {len(labels)} labels")
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    x_all = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    y_all = torch.from_numpy(labels.astype(np.int64))
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y_all), args.batch_size):
            x, y = x_all[i: i + args.batch_size], y_all[i: i + args.batch_size]
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    n = len(y_all)
    acc, loss = correct / n, loss_sum / n
    print(f"{args.checkpoint} ({model_name}, {len(state)} tensors, strict load ok, torch {torch.__version__}): "
          f"{n} test images, accuracy {acc:.6f}, loss {loss:.6f}")

    status = 0
    if args.expect is not None:
        ok = abs(acc - args.expect) < 1e-4
        print(f"expected accuracy {args.expect:.6f}: {'OK' if ok else 'MISMATCH'} (difference {acc - args.expect:+.2e})")
        status |= 0 if ok else 1
    if args.expect_loss is not None:
        ok = abs(loss - args.expect_loss) < 1e-4
        print(f"expected loss {args.expect_loss:.6f}: {'OK' if ok else 'MISMATCH'} (difference {loss - args.expect_loss:+.2e})")
        status |= 0 if ok else 1
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
