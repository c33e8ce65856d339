#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures for normlab's training options:
AdamW and Nesterov SGD steps, label smoothing, and learning-rate schedules.

Run from the repository root:

    /path/to/venv/bin/python tools/make_training_fixtures.py

It writes, in the conventions of ``tools/make_fixtures.py`` (float32 and
int64 tensors, PyTorch layout, ``state_dict`` keys of a module whose
attribute ``net`` is the ``nn.Sequential``):

adamw_steps.safetensors
    net = Conv2d(1, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU, MaxPool2d(2),
    Flatten, Linear(36, 5), built under manual_seed(20) with PyTorch's
    default init; three train-mode steps of
    AdamW(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05) on
    CrossEntropyLoss(label_smoothing=0.1): x1..x3 (8, 1, 6, 6),
    labels1..labels3, loss1..loss3, before.<key>, after.<key>.
sgd_nesterov_steps.safetensors
    The same network under manual_seed(21); three steps of
    SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4) on
    CrossEntropyLoss(label_smoothing=0.1), keys as adamw_steps.
label_smoothing.safetensors
    F.cross_entropy(logits, labels, label_smoothing=eps) for eps in
    {0.1, 0.35}: logits (8, 7), labels, loss_<k> and dlogits_<k>
    (gradient of the mean loss), k = 1, 2.
schedules.json
    For each case, the learning rate of every step (batch) as PyTorch's
    schedulers give it: StepLR stepped once per epoch, CosineAnnealingLR and
    OneCycleLR (cycle_momentum=False) stepped once per batch, and linear
    warm-up as a LambdaLR (Hugging Face's get_*_schedule_with_warmup
    formula: lr * t / W for t < W, then the schedule over the remaining
    steps).
"""

import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT_DIR = os.path.join("tests", "fixtures")
COMMAND = "python tools/make_training_fixtures.py"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def c(t):
    """Detached, contiguous, CPU copy."""
    return t.detach().cpu().contiguous().clone()


def state(model, prefix):
    return {prefix + k: c(v) for k, v in model.state_dict().items()}


def save(name, tensors, description):
    """A safetensors file written directly (the format is a JSON header and
    the raw little-endian data), keys and metadata sorted so that the bytes
    are reproducible; no safetensors package needed."""
    meta = {"torch_version": torch.__version__, "command": COMMAND,
            "generator": "tools/make_training_fixtures.py", "description": description}
    header, blobs, offset = {"__metadata__": dict(sorted(meta.items()))}, [], 0
    for k in sorted(tensors):
        v = c(tensors[k])
        dtype = {torch.float32: "F32", torch.int64: "I64"}[v.dtype]
        blob = v.numpy().astype("<f4" if dtype == "F32" else "<i8").tobytes()
        header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, name + ".safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5))

    def forward(self, x):
        return self.net(x)


def three_steps(seed, make_optimizer):
    """The Small net under manual_seed(seed), three train-mode steps of the
    optimizer on cross_entropy(label_smoothing=0.1): inputs, labels, losses
    and the state before and after."""
    torch.manual_seed(seed)
    model = Small()
    out = {}
    batches = [(torch.rand(8, 1, 6, 6), torch.randint(0, 5, (8,), dtype=torch.int64)) for _ in range(3)]
    out.update(state(model, "before."))
    opt = make_optimizer(model.parameters())
    model.train()
    for i, (x, labels) in enumerate(batches, 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels, label_smoothing=0.1)
        loss.backward()
        opt.step()
        out.update({f"x{i}": x, f"labels{i}": labels, f"loss{i}": c(loss)})
    out.update(state(model, "after."))
    return out


def adamw_steps():
    out = three_steps(20, lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05))
    save("adamw_steps", out,
         "Small net (conv 4x3x3 pad 1 no bias: a bias before BN has a zero gradient, whose sign AdamW amplifies, BN, ReLU, maxpool 2, flatten, linear 5), manual_seed(20); three "
         "train-mode steps of AdamW(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05) on "
         "cross_entropy(label_smoothing=0.1)")


def sgd_nesterov_steps():
    out = three_steps(21, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    save("sgd_nesterov_steps", out,
         "Small net as adamw_steps, manual_seed(21); three train-mode steps of SGD(lr=0.1, momentum=0.9, "
         "nesterov=True, weight_decay=5e-4) on cross_entropy(label_smoothing=0.1): the fast preset's optimizer")


def label_smoothing():
    torch.manual_seed(21)
    out = {}
    logits = torch.randn(8, 7) * 3
    labels = torch.randint(0, 7, (8,), dtype=torch.int64)
    out.update({"logits": logits, "labels": labels})
    for k, eps in ((1, 0.1), (2, 0.35)):
        z = logits.clone().requires_grad_(True)
        loss = F.cross_entropy(z, labels, label_smoothing=eps)
        loss.backward()
        # the formula: (1 - eps) * nll + eps * mean over classes of -log softmax
        logp = F.log_softmax(logits.double(), dim=1)
        want = ((1 - eps) * -logp.gather(1, labels[:, None]).squeeze(1) - eps * logp.mean(1)).mean()
        assert abs(want.item() - loss.item()) < 1e-5, (want.item(), loss.item())
        out.update({f"loss_{k}": c(loss), f"dlogits_{k}": c(z.grad)})
    save("label_smoothing", out, "F.cross_entropy(logits (8,7), labels, label_smoothing=eps): "
         "loss_1/dlogits_1 for eps 0.1, loss_2/dlogits_2 for eps 0.35")


def lrs(lr, epochs, steps, make, per_epoch=False):
    """The lr of each step, reading the optimizer's lr before the step."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    got = []
    for _ in range(epochs):
        for _ in range(steps):
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            if not per_epoch:
                sched.step()
        if per_epoch:
            sched.step()
    return got


def warmup_then(w, total, after):
    return lambda t: t / w if t < w else after(t)


def schedules():
    cases = []

    def case(name, schedule, lr, epochs, steps, values, **kw):
        cases.append(dict(name=name, schedule=schedule, lr=lr, epochs=epochs, steps_per_epoch=steps,
                          warmup_epochs=kw.get("warmup_epochs"), step_size=kw.get("step_size"),
                          gamma=kw.get("gamma", 0.1), lrs=values))

    case("step", "step", 0.1, 7, 5,
         lrs(0.1, 7, 5, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), per_epoch=True),
         step_size=2, gamma=0.5)
    case("cosine", "cosine", 0.2, 5, 4,
         lrs(0.2, 5, 4, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20)))
    w, t = 6, 20  # 1.5 epochs of 4 steps
    case("cosine_warmup", "cosine", 0.2, 5, 4,
         lrs(0.2, 5, 4, lambda o: torch.optim.lr_scheduler.LambdaLR(
             o, warmup_then(w, t, lambda s: 0.5 * (1 + math.cos(math.pi * (s - w) / (t - w))))),),
         warmup_epochs=1.5)
    case("constant_warmup", "constant", 0.05, 4, 3,
         lrs(0.05, 4, 3, lambda o: torch.optim.lr_scheduler.LambdaLR(o, warmup_then(6, 12, lambda s: 1.0))),
         warmup_epochs=2.0)
    # one-cycle: pct_start = warm-up steps / total (default warm-up round(0.3 * total) steps)
    case("one_cycle", "one-cycle", 0.1, 3, 7,
         lrs(0.1, 3, 7, lambda o: torch.optim.lr_scheduler.OneCycleLR(
             o, max_lr=0.1, total_steps=21, pct_start=6 / 21, cycle_momentum=False)))
    case("one_cycle_warmup", "one-cycle", 0.4, 4, 5,
         lrs(0.4, 4, 5, lambda o: torch.optim.lr_scheduler.OneCycleLR(
             o, max_lr=0.4, total_steps=20, pct_start=5 / 20, cycle_momentum=False)),
         warmup_epochs=1.0)
    doc = {"torch_version": torch.__version__, "command": COMMAND,
           "description": "lr of every step (read before the step) from PyTorch's schedulers", "cases": cases}
    with open(os.path.join(OUT_DIR, "schedules.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    adamw_steps()
    sgd_nesterov_steps()
    label_smoothing()
    schedules()
    print(f"torch {torch.__version__}: wrote adamw_steps, sgd_nesterov_steps, label_smoothing, schedules.json in {OUT_DIR}")
