#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures for normlab's Rust tests.

Run from the repository root:

    /path/to/venv/bin/python tools/make_fixtures.py

It writes ``tests/fixtures/*.safetensors``. PyTorch is only a fixture tool:
the Rust crate never depends on it at build or run time. Each file carries
metadata ``torch_version``, ``command``, ``generator`` and ``description``.

Conventions (the Rust tests are written against these names)
------------------------------------------------------------
* All tensors are float32, C-contiguous, PyTorch layout (NCHW for images,
  (out, in) for linear weights, (out, in, kh, kw) for conv weights), except
  labels and ``num_batches_tracked`` which are int64 (``num_batches_tracked``
  has shape ``[]``; so do losses).
* ``x`` is the input, ``y`` the forward output, ``dy`` the upstream gradient.
  Every backward is ``y.backward(dy)``, i.e. the loss is ``(y * dy).sum()``.
* ``dx``, ``dweight``, ``dbias`` (``dgamma``, ``dbeta`` for the scratch
  d2l batch norm) are the gradients of that loss w.r.t. x and the parameters.
* Suffix ``_in`` = state before the forward pass, ``_out`` = state after it
  (``running_mean_in`` -> ``running_mean_out`` etc.).
* BatchNorm defaults: eps = 1e-5, momentum = 0.1 with PyTorch's convention
  ``running = (1 - m) * running + m * batch_stat``; PyTorch updates
  ``running_var`` with the UNBIASED batch variance, normalizes with the biased one.
* Prefixes: ``fc_`` = the 2-D (N, C) case in a file whose unprefixed tensors
  are the 4-D case (bn_d2l). In model fixtures ``before.<key>``,
  ``grad.<key>``, ``after.<key>`` use PyTorch ``state_dict`` keys of the
  module ``Model`` below (attribute ``net`` = nn.Sequential), e.g.
  ``before.net.0.weight``, ``after.net.1.running_mean``,
  ``grad.net.15.bias``, ``before.net.1.num_batches_tracked``.

Files
-----
bn_fc_train        BatchNorm1d(5), train, x (8,5): x weight bias running_mean_in
                   running_var_in dy y dx dweight dbias running_mean_out
                   running_var_out num_batches_tracked_out
bn_conv_train      BatchNorm2d(3), train, x (4,3,5,6): same names
bn_fc_eval         BatchNorm1d(5), eval, x (8,5): x weight bias running_mean_in
                   running_var_in dy y dx dweight dbias x1 (1,5) y1
bn_conv_eval       BatchNorm2d(3), eval, x (4,3,5,6): same names, x1 (1,3,5,6)
bn_momentum_none   BatchNorm2d(3, momentum=None), train, three forwards on
                   x1, x2, x3: x1 x2 x3 weight bias running_mean_in
                   running_var_in y3 running_mean_out running_var_out
                   num_batches_tracked_out (= 3). With momentum=None the
                   running stats are the cumulative average of the batch
                   stats (the first forward has factor 1, so the _in stats
                   are fully replaced).
bn_affine_off      BatchNorm2d(3, affine=False), train: x running_mean_in
                   running_var_in dy y dx running_mean_out running_var_out
bn_no_tracking     BatchNorm2d(3, track_running_stats=False) in EVAL mode
                   (batch statistics): x weight bias dy y dx dweight dbias
bn_d2l             chapter's scratch batch_norm, training, biased variance
                   for normalisation AND moving_var: x (4,3,5,6) gamma beta
                   moving_mean_in moving_var_in (all (3,)) dy y dx dgamma
                   dbeta moving_mean_out moving_var_out; fc_ versions on x (8,5)
layer_norm         LayerNorm([3,4]), x (5,3,4): x weight bias dy y dx dweight dbias
layer_norm_1d      LayerNorm(6), x (7,6): same names
conv2d             Conv2d(3,4,k=3,stride=2,pad=1), x (2,3,7,8): x weight bias
                   dy y dx dweight dbias
conv2d_nobias      Conv2d(2,3,k=5,bias=False), x (3,2,9,9): x weight dy y dx dweight
linear             Linear(7,5), x (6,7): x weight bias dy y dx dweight dbias
linear_nobias      Linear(7,5,bias=False): x weight dy y dx dweight
avgpool            AvgPool2d(2,2), x (2,3,6,8): x dy y dx
maxpool            MaxPool2d(2,2), x (2,3,6,8) distinct values: x dy y dx
maxpool_k3s2       MaxPool2d(3,2), x (2,2,7,7) distinct values: x dy y dx
cross_entropy      logits (8,10) labels (8,) int64 loss [] (mean) dlogits
sigmoid_relu       x (4,6) (no zeros) sigmoid_y relu_y dy sigmoid_dx relu_dx
bnlenet_step       BNLeNet, batch 16, one SGD(lr=0.1) step in train mode:
                   x labels before.<key> logits loss grad.<param key>
                   after.<key> eval_logits (eval-mode forward after the step)
bnlenet_momentum   BNLeNet, batch 8, two steps of SGD(lr=0.05, momentum=0.9,
                   weight_decay=1e-3): x1 labels1 x2 labels2 before.<key>
                   loss1 loss2 after.<key>
"""

import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

OUT_DIR = os.path.join("tests", "fixtures")
COMMAND = "python tools/make_fixtures.py"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)


def c(t):
    """Detached, contiguous, CPU copy."""
    return t.detach().cpu().contiguous().clone()


def save(name, tensors, description):
    os.makedirs(OUT_DIR, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = c(v)
        assert v.dtype in (torch.float32, torch.int64), (name, k, v.dtype)
        out[k] = v
    meta = {
        "torch_version": torch.__version__,
        "command": COMMAND,
        "generator": "tools/make_fixtures.py",
        "description": description,
    }
    path = os.path.join(OUT_DIR, name + ".safetensors")
    save_file(out, path, metadata=meta)
    canonicalize_header(path)
    return out


def canonicalize_header(path):
    """safetensors stores the metadata in a Rust HashMap, so the order of its
    keys in the JSON header changes from run to run. Rewrite the header with
    the metadata keys sorted (same length, tensor entries and data untouched)
    so that regenerating the fixtures is byte-for-byte reproducible."""
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


def rand_bn_state(bn, gen_affine=True):
    """Random gamma/beta and running stats, in place."""
    c_ = bn.num_features
    with torch.no_grad():
        if gen_affine and bn.affine:
            bn.weight.copy_(1 + 0.3 * torch.randn(c_))
            bn.bias.copy_(0.5 * torch.randn(c_))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(c_) * 0.5)
            bn.running_var.copy_(0.5 + torch.rand(c_))


def check_close(a, b, what, tol=1e-5):
    err = (a - b).abs().max().item()
    if err > tol:
        raise AssertionError(f"self-check failed for {what}: max abs err {err}")


def manual_bn_train(x, w, b, eps=1e-5):
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    xh = (x - mu) / torch.sqrt(var + eps)
    return xh * w.view(shape) + b.view(shape), mu.flatten(), var.flatten()


# --------------------------------------------------------------------------- BN


def bn_train(name, cls, xshape, seed):
    torch.manual_seed(seed)
    bn = cls(xshape[1])
    rand_bn_state(bn)
    bn.train()
    rm_in, rv_in = c(bn.running_mean), c(bn.running_var)
    x = torch.randn(*xshape) * 1.5 + 0.7
    x.requires_grad_(True)
    dy = torch.randn(*xshape)
    y = bn(x)
    y.backward(dy)
    # self-checks against the formulas in docs/spec.md
    y_ref, mu, var = manual_bn_train(x.detach(), bn.weight.detach(), bn.bias.detach())
    check_close(y.detach(), y_ref, name + " y")
    n = x.numel() // xshape[1]
    check_close(bn.running_mean, 0.9 * rm_in + 0.1 * mu, name + " running_mean")
    check_close(bn.running_var, 0.9 * rv_in + 0.1 * var * n / (n - 1), name + " running_var")
    return save(name, {
        "x": x, "weight": bn.weight, "bias": bn.bias,
        "running_mean_in": rm_in, "running_var_in": rv_in,
        "dy": dy, "y": y, "dx": x.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
        "running_mean_out": bn.running_mean, "running_var_out": bn.running_var,
        "num_batches_tracked_out": bn.num_batches_tracked,
    }, f"{cls.__name__}({xshape[1]}) training mode, momentum 0.1, eps 1e-5, x {tuple(xshape)}")


def bn_eval(name, cls, xshape, seed):
    torch.manual_seed(seed)
    bn = cls(xshape[1])
    rand_bn_state(bn)
    bn.eval()
    rm_in, rv_in = c(bn.running_mean), c(bn.running_var)
    x = torch.randn(*xshape) * 1.5 + 0.7
    x.requires_grad_(True)
    dy = torch.randn(*xshape)
    y = bn(x)
    y.backward(dy)
    x1 = torch.randn(1, *xshape[1:]) * 1.5 + 0.7
    with torch.no_grad():
        y1 = bn(x1)
    shape = [1, -1] + [1] * (len(xshape) - 2)
    ref = (x.detach() - rm_in.view(shape)) / torch.sqrt(rv_in.view(shape) + 1e-5) \
        * bn.weight.detach().view(shape) + bn.bias.detach().view(shape)
    check_close(y.detach(), ref, name + " y")
    assert torch.equal(bn.running_mean, rm_in) and torch.equal(bn.running_var, rv_in)
    return save(name, {
        "x": x, "weight": bn.weight, "bias": bn.bias,
        "running_mean_in": rm_in, "running_var_in": rv_in,
        "dy": dy, "y": y, "dx": x.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
        "x1": x1, "y1": y1,
    }, f"{cls.__name__}({xshape[1]}) eval mode with random running stats, x {tuple(xshape)}; "
       f"x1/y1: single example")


def bn_momentum_none(seed=5):
    name = "bn_momentum_none"
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3, momentum=None)
    rand_bn_state(bn)
    bn.train()
    rm_in, rv_in = c(bn.running_mean), c(bn.running_var)
    xs = [torch.randn(4, 3, 5, 6) * 1.5 + 0.7 + i * 0.3 for i in range(3)]
    with torch.no_grad():
        for x in xs:
            y = bn(x)
    # self-check: cumulative average of batch stats
    n = 4 * 5 * 6
    mus = [x.mean((0, 2, 3)) for x in xs]
    vs = [x.var((0, 2, 3), unbiased=True) for x in xs]
    check_close(bn.running_mean, sum(mus) / 3, name + " running_mean")
    check_close(bn.running_var, sum(vs) / 3, name + " running_var")
    assert int(bn.num_batches_tracked) == 3
    return save(name, {
        "x1": xs[0], "x2": xs[1], "x3": xs[2], "weight": bn.weight, "bias": bn.bias,
        "running_mean_in": rm_in, "running_var_in": rv_in, "y3": y,
        "running_mean_out": bn.running_mean, "running_var_out": bn.running_var,
        "num_batches_tracked_out": bn.num_batches_tracked,
    }, "BatchNorm2d(3, momentum=None) training mode, three forwards x1, x2, x3 (cumulative "
       "average); y3 is the output of the third forward")


def bn_affine_off(seed=6):
    name = "bn_affine_off"
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3, affine=False)
    rand_bn_state(bn)
    bn.train()
    rm_in, rv_in = c(bn.running_mean), c(bn.running_var)
    x = (torch.randn(4, 3, 5, 6) * 1.5 + 0.7).requires_grad_(True)
    dy = torch.randn(4, 3, 5, 6)
    y = bn(x)
    y.backward(dy)
    y_ref, _, _ = manual_bn_train(x.detach(), torch.ones(3), torch.zeros(3))
    check_close(y.detach(), y_ref, name + " y")
    return save(name, {
        "x": x, "running_mean_in": rm_in, "running_var_in": rv_in,
        "dy": dy, "y": y, "dx": x.grad,
        "running_mean_out": bn.running_mean, "running_var_out": bn.running_var,
    }, "BatchNorm2d(3, affine=False) training mode, x (4,3,5,6)")


def bn_no_tracking(seed=7):
    name = "bn_no_tracking"
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    rand_bn_state(bn)
    bn.eval()
    x = (torch.randn(4, 3, 5, 6) * 1.5 + 0.7).requires_grad_(True)
    dy = torch.randn(4, 3, 5, 6)
    y = bn(x)
    y.backward(dy)
    y_ref, _, _ = manual_bn_train(x.detach(), bn.weight.detach(), bn.bias.detach())
    check_close(y.detach(), y_ref, name + " y")
    return save(name, {
        "x": x, "weight": bn.weight, "bias": bn.bias,
        "dy": dy, "y": y, "dx": x.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
    }, "BatchNorm2d(3, track_running_stats=False) in eval mode (uses batch statistics), "
       "x (4,3,5,6)")


# The chapter's scratch implementation (PyTorch tab), verbatim logic.
def d2l_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


class D2LBatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        Y, self.moving_mean, self.moving_var = d2l_batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=1e-5, momentum=0.1)
        return Y


def bn_d2l(seed=8):
    name = "bn_d2l"
    torch.manual_seed(seed)
    out = {}
    for prefix, xshape in (("", (4, 3, 5, 6)), ("fc_", (8, 5))):
        c_ = xshape[1]
        layer = D2LBatchNorm(c_, len(xshape))
        shape = layer.gamma.shape
        with torch.no_grad():
            layer.gamma.copy_((1 + 0.3 * torch.randn(c_)).view(shape))
            layer.beta.copy_((0.5 * torch.randn(c_)).view(shape))
        layer.moving_mean = (torch.randn(c_) * 0.5).view(shape)
        layer.moving_var = (0.5 + torch.rand(c_)).view(shape)
        mm_in, mv_in = c(layer.moving_mean), c(layer.moving_var)
        layer.train()
        x = (torch.randn(*xshape) * 1.5 + 0.7).requires_grad_(True)
        dy = torch.randn(*xshape)
        y = layer(x)
        y.backward(dy)
        y_ref, mu, var = manual_bn_train(x.detach(), layer.gamma.detach().flatten(),
                                         layer.beta.detach().flatten())
        check_close(y.detach(), y_ref, name + prefix + " y")
        check_close(layer.moving_var.flatten(), 0.9 * mv_in.flatten() + 0.1 * var,
                    name + prefix + " moving_var (biased)")
        out.update({
            prefix + "x": x,
            prefix + "gamma": layer.gamma.flatten(),
            prefix + "beta": layer.beta.flatten(),
            prefix + "moving_mean_in": mm_in.flatten(),
            prefix + "moving_var_in": mv_in.flatten(),
            prefix + "dy": dy, prefix + "y": y, prefix + "dx": x.grad,
            prefix + "dgamma": layer.gamma.grad.flatten(),
            prefix + "dbeta": layer.beta.grad.flatten(),
            prefix + "moving_mean_out": layer.moving_mean.flatten(),
            prefix + "moving_var_out": layer.moving_var.flatten(),
        })
    return save(name, out, "the chapter's scratch batch_norm/BatchNorm (PyTorch tab), training "
                "mode, eps 1e-5, momentum 0.1, biased variance for normalisation and "
                "moving_var; unprefixed: x (4,3,5,6), fc_: x (8,5); per-channel tensors "
                "flattened to (C,)")


# --------------------------------------------------------------------- layers


def run_module(mod, x, dy):
    x = x.clone().requires_grad_(True)
    y = mod(x)
    y.backward(dy)
    d = {"x": x, "dy": dy, "y": y, "dx": x.grad}
    if getattr(mod, "weight", None) is not None:
        d["weight"] = mod.weight
        d["dweight"] = mod.weight.grad
    if getattr(mod, "bias", None) is not None:
        d["bias"] = mod.bias
        d["dbias"] = mod.bias.grad
    return d


def layer_norm(name, shape, xshape, seed):
    torch.manual_seed(seed)
    ln = nn.LayerNorm(shape, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape))
        ln.bias.copy_(0.5 * torch.randn(ln.bias.shape))
    x = torch.randn(*xshape) * 1.5 + 0.7
    dy = torch.randn(*xshape)
    d = run_module(ln, x, dy)
    nd = len(ln.normalized_shape)
    dims = tuple(range(-nd, 0))
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * ln.weight.detach() + ln.bias.detach()
    check_close(d["y"].detach(), ref, name + " y")
    return save(name, d, f"nn.LayerNorm({list(ln.normalized_shape)}, eps=1e-5), random affine, "
                f"x {tuple(xshape)}")


def module_fixture(name, mod, xshape, seed, desc, x=None):
    torch.manual_seed(seed)
    if isinstance(mod, type(lambda: 0)):
        mod = mod()
    if x is None:
        x = torch.randn(*xshape)
    with torch.no_grad():
        y_shape = mod(x).shape
    dy = torch.randn(*y_shape)
    return save(name, run_module(mod, x, dy), desc)


def distinct(shape, seed):
    torch.manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    # exact multiples of 1/16, all distinct: no ties in max pooling
    return ((torch.randperm(n).to(torch.float32) - n / 2) / 16.0).view(*shape)


def cross_entropy(seed=13):
    torch.manual_seed(seed)
    logits = (torch.randn(8, 10) * 3).requires_grad_(True)
    labels = torch.randint(0, 10, (8,), dtype=torch.int64)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    ref = (F.softmax(logits.detach(), 1) - F.one_hot(labels, 10).float()) / 8
    check_close(logits.grad, ref, "cross_entropy dlogits")
    return save("cross_entropy", {"logits": logits, "labels": labels, "loss": loss,
                                  "dlogits": logits.grad},
                "F.cross_entropy (mean reduction) on logits (8,10), int64 labels (8,)")


def sigmoid_relu(seed=14):
    torch.manual_seed(seed)
    x = torch.randn(4, 6)
    # push small values away from 0 (relu's derivative is undefined there)
    x = torch.where(x.abs() < 0.05, torch.where(x < 0, -0.05, 0.05), x)
    assert (x != 0).all()
    dy = torch.randn(4, 6)
    xs = x.clone().requires_grad_(True)
    ys = torch.sigmoid(xs)
    ys.backward(dy)
    xr = x.clone().requires_grad_(True)
    yr = torch.relu(xr)
    yr.backward(dy)
    return save("sigmoid_relu", {"x": x, "sigmoid_y": ys, "relu_y": yr, "dy": dy,
                                 "sigmoid_dx": xs.grad, "relu_dx": xr.grad},
                "torch.sigmoid and torch.relu on x (4,6) with no zero elements")


# -------------------------------------------------------------------- BNLeNet


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
            nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
            nn.Linear(84, 10))

    def forward(self, x):
        return self.net(x)


def make_bnlenet(seed):
    """Construct under manual_seed(seed) (PyTorch default init, which sets the
    biases), then Xavier-uniform every conv/linear weight in module order, then
    random BN gamma (1 + 0.1 randn) / beta (0.1 randn) in module order."""
    torch.manual_seed(seed)
    model = Model()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features))
                m.bias.copy_(0.1 * torch.randn(m.num_features))
    return model


def state(model, prefix):
    return {prefix + k: c(v) for k, v in model.state_dict().items()}


def bnlenet_step():
    model = make_bnlenet(0)
    x = torch.rand(16, 1, 28, 28)
    labels = torch.randint(0, 10, (16,), dtype=torch.int64)
    out = {"x": x, "labels": labels}
    out.update(state(model, "before."))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    opt.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    for k, p in model.named_parameters():
        out["grad." + k] = c(p.grad)
    opt.step()
    out.update(state(model, "after."))
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    out.update({"logits": logits, "loss": loss, "eval_logits": eval_logits})
    # self-check: plain SGD
    for k, _ in model.named_parameters():
        check_close(out["after." + k], out["before." + k] - 0.1 * out["grad." + k], "sgd " + k)
    return save("bnlenet_step", out,
                "BNLeNet (Model.net = nn.Sequential), xavier-uniform conv/linear weights, "
                "default biases, random BN gamma/beta, under manual_seed(0); batch 16; one "
                "train-mode step: F.cross_entropy (mean) + SGD(lr=0.1); eval_logits = eval-mode "
                "forward after the step")


def bnlenet_momentum():
    model = make_bnlenet(1)
    x1 = torch.rand(8, 1, 28, 28)
    labels1 = torch.randint(0, 10, (8,), dtype=torch.int64)
    x2 = torch.rand(8, 1, 28, 28)
    labels2 = torch.randint(0, 10, (8,), dtype=torch.int64)
    out = {"x1": x1, "labels1": labels1, "x2": x2, "labels2": labels2}
    out.update(state(model, "before."))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    model.train()
    losses = []
    for x, lab in ((x1, labels1), (x2, labels2)):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), lab)
        loss.backward()
        opt.step()
        losses.append(c(loss))
    out.update(state(model, "after."))
    out.update({"loss1": losses[0], "loss2": losses[1]})
    return save("bnlenet_momentum", out,
                "BNLeNet, same init recipe under manual_seed(1); batch 8; two train-mode steps "
                "of SGD(lr=0.05, momentum=0.9, weight_decay=1e-3) on (x1, labels1) then "
                "(x2, labels2)")


# ----------------------------------------------------------------------- main


def main():
    bn_train("bn_fc_train", nn.BatchNorm1d, (8, 5), 1)
    bn_train("bn_conv_train", nn.BatchNorm2d, (4, 3, 5, 6), 2)
    bn_eval("bn_fc_eval", nn.BatchNorm1d, (8, 5), 3)
    bn_eval("bn_conv_eval", nn.BatchNorm2d, (4, 3, 5, 6), 4)
    bn_momentum_none(5)
    bn_affine_off(6)
    bn_no_tracking(7)
    bn_d2l(8)
    layer_norm("layer_norm", [3, 4], (5, 3, 4), 9)
    layer_norm("layer_norm_1d", 6, (7, 6), 10)
    module_fixture("conv2d", lambda: nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1, bias=True),
                   (2, 3, 7, 8), 11, "nn.Conv2d(3,4,kernel_size=3,stride=2,padding=1), x (2,3,7,8)")
    module_fixture("conv2d_nobias", lambda: nn.Conv2d(2, 3, kernel_size=5, bias=False),
                   (3, 2, 9, 9), 12, "nn.Conv2d(2,3,kernel_size=5,bias=False), x (3,2,9,9)")
    module_fixture("linear", lambda: nn.Linear(7, 5), (6, 7), 13, "nn.Linear(7,5), x (6,7)")
    module_fixture("linear_nobias", lambda: nn.Linear(7, 5, bias=False), (6, 7), 14,
                   "nn.Linear(7,5,bias=False), x (6,7)")
    module_fixture("avgpool", lambda: nn.AvgPool2d(2, 2), (2, 3, 6, 8), 15,
                   "nn.AvgPool2d(2,2), x (2,3,6,8)")
    module_fixture("maxpool", lambda: nn.MaxPool2d(2, 2), None, 16,
                   "nn.MaxPool2d(2,2), x (2,3,6,8) with distinct values (no ties)",
                   x=distinct((2, 3, 6, 8), 116))
    module_fixture("maxpool_k3s2", lambda: nn.MaxPool2d(3, 2), None, 17,
                   "nn.MaxPool2d(3,2), x (2,2,7,7) with distinct values (no ties)",
                   x=distinct((2, 2, 7, 7), 117))
    cross_entropy(18)
    sigmoid_relu(19)
    bnlenet_step()
    bnlenet_momentum()

    # Reload every file and print a table.
    print(f"torch {torch.__version__}")
    total = 0
    print(f"{'file':36s} {'bytes':>9s} {'tensors':>7s}")
    for fn in sorted(os.listdir(OUT_DIR)):
        if not fn.endswith(".safetensors"):
            continue
        path = os.path.join(OUT_DIR, fn)
        t = load_file(path)
        for k, v in t.items():
            assert v.is_contiguous(), (fn, k)
            assert v.dtype in (torch.float32, torch.int64), (fn, k, v.dtype)
            if v.dtype == torch.float32:
                assert torch.isfinite(v).all(), (fn, k)
        size = os.path.getsize(path)
        total += size
        print(f"{fn:36s} {size:9d} {len(t):7d}")
    print(f"{'total':36s} {total:9d}")


if __name__ == "__main__":
    sys.exit(main())
