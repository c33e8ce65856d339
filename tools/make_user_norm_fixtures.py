#!/usr/bin/env python3
"""Generate the PyTorch reference fixture for normlab's RMSNorm, InstanceNorm
and FrozenBatchNorm layers (issue 18, "normalizations users ask for").

Run from the repository root:

    /path/to/venv/bin/python tools/make_user_norm_fixtures.py

It needs only torch (the safetensors file is written by a few lines below)
and writes ``tests/fixtures/user_norms.safetensors`` (float32, PyTorch
layout) in the conventions of ``tools/make_fixtures.py``: ``x`` the input,
``y`` the output, ``dy`` the upstream gradient, every backward is
``y.backward(dy)`` (the loss is ``(y * dy).sum()``), ``dx``, ``dweight``,
``dbias`` the gradients of that loss.

Tensors
-------
rms_*      nn.RMSNorm([3, 4]) (eps=None: float32's machine epsilon) on x (5, 2, 3, 4),
           random weight: rms_x rms_weight rms_dy rms_y rms_dx rms_dweight
rms1d_*    nn.RMSNorm(6, eps=1e-5) on x (7, 6): same names
rmsnoaff_* nn.RMSNorm(8, elementwise_affine=False) on x (3, 8): x dy y dx
in_*       nn.InstanceNorm2d(4) (PyTorch's defaults: no affine, no running
           statistics) on x (3, 4, 5, 5): in_x in_dy in_y in_dx
in1d_*     nn.InstanceNorm1d(3) on x (2, 3, 7): same names
inrun_*    nn.InstanceNorm2d(4, affine=True, track_running_stats=True), random
           weight and bias: a training forward and backward on inrun_x
           (inrun_y, inrun_dx, inrun_dweight, inrun_dbias), the running
           statistics after it (inrun_running_mean, inrun_running_var), then a
           prediction-mode forward and backward on inrun_x2 with inrun_dy2
           (inrun_y_eval, inrun_dx_eval)
frozen_*   torchvision's FrozenBatchNorm2d(4) forward (torchvision is not in the
           venv; its forward is written out below, line for line the same
           arithmetic) with random buffers, on x (2, 4, 3, 3):
           frozen_x frozen_weight frozen_bias frozen_running_mean
           frozen_running_var frozen_dy frozen_y frozen_dx

The script checks PyTorch's outputs against the formulas, then reloads the
file.
"""

import json
import os
import struct

import torch
import torch.nn as nn

OUT = os.path.join("tests", "fixtures", "user_norms.safetensors")
COMMAND = "python tools/make_user_norm_fixtures.py"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)


def c(t):
    return t.detach().cpu().contiguous().clone()


def save_file(tensors, path, metadata):
    """Writes float32 tensors in the safetensors format (8-byte little-endian
    header length, a JSON header with the metadata and the tensors' dtype,
    shape and offsets in sorted key order, then the raw little-endian data),
    so the script needs only torch; the same bytes for the same values."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for key in sorted(tensors):
        t = tensors[key].to(torch.float32).contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    os.replace(path + ".tmp", path)


def load_file(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(blob[8 + n + start:8 + n + end])
        out[key] = torch.frombuffer(raw, dtype=torch.float32).reshape(info["shape"]).clone()
    return out


def rms_case(prefix, shape, xshape, seed, eps=None, affine=True):
    torch.manual_seed(seed)
    rms = nn.RMSNorm(shape, eps=eps, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            rms.weight.copy_(1 + 0.3 * torch.randn(rms.weight.shape))
    x = (torch.randn(*xshape) * 1.5 + 0.4).requires_grad_(True)
    dy = torch.randn(*xshape)
    y = rms(x)
    y.backward(dy)
    dims = tuple(range(x.dim() - len(rms.normalized_shape), x.dim()))
    e = torch.finfo(torch.float32).eps if eps is None else eps
    ref = x.detach() * torch.rsqrt((x.detach() ** 2).mean(dims, keepdim=True) + e)
    if affine:
        ref = ref * rms.weight.detach()
    err = (ref - y.detach()).abs().max().item()
    assert err < 1e-5, (prefix, err)
    out = {f"{prefix}_x": x, f"{prefix}_dy": dy, f"{prefix}_y": y, f"{prefix}_dx": x.grad}
    if affine:
        out.update({f"{prefix}_weight": rms.weight, f"{prefix}_dweight": rms.weight.grad})
    return {k: c(v) for k, v in out.items()}


def instance_case(prefix, module, xshape, seed):
    torch.manual_seed(seed)
    x = (torch.randn(*xshape) * 1.5 + 0.7).requires_grad_(True)
    dy = torch.randn(*xshape)
    y = module(x)
    y.backward(dy)
    dims = tuple(range(2, x.dim()))
    xd = x.detach()
    ref = (xd - xd.mean(dims, keepdim=True)) / torch.sqrt(xd.var(dims, unbiased=False, keepdim=True) + 1e-5)
    err = (ref - y.detach()).abs().max().item()
    assert err < 1e-5, (prefix, err)
    return {k: c(v) for k, v in {f"{prefix}_x": x, f"{prefix}_dy": dy, f"{prefix}_y": y, f"{prefix}_dx": x.grad}.items()}


def instance_running_case(prefix, seed):
    torch.manual_seed(seed)
    inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    with torch.no_grad():
        inorm.weight.copy_(1 + 0.3 * torch.randn(4))
        inorm.bias.copy_(0.5 * torch.randn(4))
    x = (torch.randn(3, 4, 4, 5) * 2.0 + 1.0).requires_grad_(True)
    dy = torch.randn(3, 4, 4, 5)
    inorm.train()
    y = inorm(x)
    y.backward(dy)
    out = {
        f"{prefix}_x": x, f"{prefix}_dy": dy, f"{prefix}_y": y, f"{prefix}_dx": x.grad,
        f"{prefix}_weight": inorm.weight, f"{prefix}_bias": inorm.bias,
        f"{prefix}_dweight": inorm.weight.grad.clone(), f"{prefix}_dbias": inorm.bias.grad.clone(),
        f"{prefix}_running_mean": inorm.running_mean.clone(), f"{prefix}_running_var": inorm.running_var.clone(),
    }
    # the running-statistics update: the batch mean of the instances' means
    # and of their unbiased variances
    xd = x.detach()
    want_mean = 0.1 * xd.mean((2, 3)).mean(0)
    want_var = 0.9 + 0.1 * xd.var((2, 3), unbiased=True).mean(0)
    assert (want_mean - inorm.running_mean).abs().max().item() < 1e-6
    assert (want_var - inorm.running_var).abs().max().item() < 1e-6
    inorm.eval()
    x2 = (torch.randn(2, 4, 4, 5) * 1.5 + 0.5).requires_grad_(True)
    dy2 = torch.randn(2, 4, 4, 5)
    y2 = inorm(x2)
    y2.backward(dy2)
    out.update({f"{prefix}_x2": x2, f"{prefix}_dy2": dy2, f"{prefix}_y_eval": y2, f"{prefix}_dx_eval": x2.grad})
    return {k: c(v) for k, v in out.items()}


def frozen_case(prefix, seed):
    """torchvision.ops.misc.FrozenBatchNorm2d.forward, written out."""
    torch.manual_seed(seed)
    ch = 4
    weight = 1 + 0.3 * torch.randn(ch)
    bias = 0.5 * torch.randn(ch)
    running_mean = 0.5 * torch.randn(ch)
    running_var = 0.5 + torch.rand(ch)
    x = (torch.randn(2, ch, 3, 3) * 1.5 + 0.3).requires_grad_(True)
    dy = torch.randn(2, ch, 3, 3)
    w = weight.reshape(1, -1, 1, 1)
    b = bias.reshape(1, -1, 1, 1)
    rv = running_var.reshape(1, -1, 1, 1)
    rm = running_mean.reshape(1, -1, 1, 1)
    scale = w * (rv + 1e-5).rsqrt()
    shift = b - rm * scale
    y = x * scale + shift
    y.backward(dy)
    bn = nn.BatchNorm2d(ch).eval()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(running_var)
        assert (bn(x) - y).abs().max().item() < 1e-5
    out = {
        f"{prefix}_x": x, f"{prefix}_weight": weight, f"{prefix}_bias": bias,
        f"{prefix}_running_mean": running_mean, f"{prefix}_running_var": running_var,
        f"{prefix}_dy": dy, f"{prefix}_y": y, f"{prefix}_dx": x.grad,
    }
    return {k: c(v) for k, v in out.items()}


def main():
    tensors = {}
    tensors.update(rms_case("rms", [3, 4], (5, 2, 3, 4), 201))
    tensors.update(rms_case("rms1d", 6, (7, 6), 202, eps=1e-5))
    tensors.update(rms_case("rmsnoaff", 8, (3, 8), 203, affine=False))
    tensors.update(instance_case("in", nn.InstanceNorm2d(4), (3, 4, 5, 5), 204))
    tensors.update(instance_case("in1d", nn.InstanceNorm1d(3), (2, 3, 7), 205))
    tensors.update(instance_running_case("inrun", 206))
    tensors.update(frozen_case("frozen", 207))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    meta = {
        "torch_version": torch.__version__,
        "command": COMMAND,
        "generator": "tools/make_user_norm_fixtures.py",
        "description": "nn.RMSNorm, nn.InstanceNorm1d/2d (defaults; affine with running statistics, train and eval) and torchvision FrozenBatchNorm2d's formula: forward and backward",
    }
    save_file(tensors, OUT, metadata=meta)
    back = load_file(OUT)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes (torch {torch.__version__})")


if __name__ == "__main__":
    main()
