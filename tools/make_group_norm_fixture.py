#!/usr/bin/env python3
"""Generate the PyTorch reference fixture for normlab's GroupNorm layer.

Run from the repository root:

    /path/to/venv/bin/python tools/make_group_norm_fixture.py

It writes ``tests/fixtures/group_norm.safetensors`` (float32, PyTorch layout),
in the conventions of ``tools/make_fixtures.py``: ``x`` the input, ``y`` the
forward output, ``dy`` the upstream gradient, every backward is
``y.backward(dy)`` (the loss is ``(y * dy).sum()``), and ``dx``,
``dweight``, ``dbias`` the gradients of that loss.

Tensors
-------
conv_*   nn.GroupNorm(2, 6) on x (4, 6, 5, 5), random weight and bias:
         conv_x conv_weight conv_bias conv_dy conv_y conv_dx conv_dweight conv_dbias
fc_*     nn.GroupNorm(2, 8) on x (5, 8) (the fully connected case; 4 values a group):
         fc_x fc_weight fc_bias fc_dy fc_y fc_dx fc_dweight fc_dbias
noaff_*  nn.GroupNorm(3, 6, affine=False) on x (2, 6, 3, 4):
         noaff_x noaff_dy noaff_y noaff_dx

The script checks PyTorch's output against the formula (normalize each
example's group of channels with its biased variance, then the per-channel
affine map), then reloads the file.
"""

import json
import os
import struct

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

OUT = os.path.join("tests", "fixtures", "group_norm.safetensors")
COMMAND = "python tools/make_group_norm_fixture.py"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)


def c(t):
    return t.detach().cpu().contiguous().clone()


def canonicalize_header(path):
    """Sort the metadata keys of the JSON header (same length), so a rerun
    with the same PyTorch gives the same bytes (as tools/make_fixtures.py)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    new = {}
    if meta is not None:
        new["__metadata__"] = dict(sorted(meta.items()))
    new.update(header)
    text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(text) <= n, path
    text = text + b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(blob[:8] + text + blob[8 + n:])


def manual(x, groups, w, b, eps=1e-5):
    n, ch = x.shape[0], x.shape[1]
    xg = x.reshape(n, groups, -1)
    mu = xg.mean(-1, keepdim=True)
    var = ((xg - mu) ** 2).mean(-1, keepdim=True)
    xh = ((xg - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    if w is None:
        return xh
    shape = [1, ch] + [1] * (x.dim() - 2)
    return xh * w.view(shape) + b.view(shape)


def case(prefix, groups, xshape, seed, affine=True):
    torch.manual_seed(seed)
    gn = nn.GroupNorm(groups, xshape[1], affine=affine)
    if affine:
        with torch.no_grad():
            gn.weight.copy_(1 + 0.3 * torch.randn(xshape[1]))
            gn.bias.copy_(0.5 * torch.randn(xshape[1]))
    x = (torch.randn(*xshape) * 1.5 + 0.7).requires_grad_(True)
    dy = torch.randn(*xshape)
    y = gn(x)
    y.backward(dy)
    ref = manual(x.detach(), groups, gn.weight.detach() if affine else None, gn.bias.detach() if affine else None)
    err = (ref - y.detach()).abs().max().item()
    assert err < 1e-5, (prefix, err)
    out = {f"{prefix}_x": x, f"{prefix}_dy": dy, f"{prefix}_y": y, f"{prefix}_dx": x.grad}
    if affine:
        out.update({
            f"{prefix}_weight": gn.weight, f"{prefix}_bias": gn.bias,
            f"{prefix}_dweight": gn.weight.grad, f"{prefix}_dbias": gn.bias.grad,
        })
    return {k: c(v) for k, v in out.items()}


def main():
    tensors = {}
    tensors.update(case("conv", 2, (4, 6, 5, 5), 101))
    tensors.update(case("fc", 2, (5, 8), 102))
    tensors.update(case("noaff", 3, (2, 6, 3, 4), 103, affine=False))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    meta = {
        "torch_version": torch.__version__,
        "command": COMMAND,
        "generator": "tools/make_group_norm_fixture.py",
        "description": "nn.GroupNorm forward and backward: GroupNorm(2, 6) on (4,6,5,5), GroupNorm(2, 8) on (5,8), GroupNorm(3, 6, affine=False) on (2,6,3,4); eps 1e-5",
    }
    save_file(tensors, OUT, metadata=meta)
    canonicalize_header(OUT)
    back = load_file(OUT)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes (torch {torch.__version__})")


if __name__ == "__main__":
    main()
