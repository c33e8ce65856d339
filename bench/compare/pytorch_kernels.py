#!/usr/bin/env python3
"""PyTorch eager timings of the kernels that ``normlab bench`` measures.

What it measures
----------------
Each kernel is called through PyTorch's public functional API on float32 CPU
tensors allocated once (contiguous, NCHW), warmed up, then timed with
``time.perf_counter``. One *sample* runs the call ``inner`` times back to back,
with ``inner`` chosen during warm-up so that a sample lasts at least
``--min-sample-ms`` (default 2 ms; small kernels would otherwise be timer
noise); ``ms`` is the MEDIAN over ``--reps`` samples (default 30) of the
per-call time.

* ``batch_norm`` (impl "pytorch"): ``F.batch_norm(x, running_mean,
  running_var, weight, bias, training=True, momentum=0.1, eps=1e-5)`` on
  (128,6,24,24), (128,16,8,8), (128,120), (128,84), (64,64,56,56),
  (32,256,14,14).
  - "forward": the call alone under ``torch.no_grad()`` (batch statistics,
    normalization, running-statistics update; no autograd recording);
  - "forward_backward": x, weight and bias require grad; the grads are set to
    None, then forward and ``y.backward(dy)`` with a fixed random ``dy``.
  ``gbs`` = ideal bytes / time: 2*4*numel for forward (read x, write y),
  5*4*numel for forward_backward (that, plus read x and dy, write dx).
* ``layer_norm``, "forward_backward" only: ``F.layer_norm`` over the last
  dimension with weight and bias, (4096,768) and (128,120); same ``gbs`` rule.
* ``conv2d``: BNLeNet's two convolutions at batch 128 (5x5, no padding,
  stride 1, with bias): input (128,1,28,28) -> 6 channels and
  (128,6,12,12) -> 16 channels; "shape" is the input shape, "out_channels"
  the output channels. conv1's backward does not compute the input gradient
  (the input is the data, as in training); conv2's does.
  ``gflops`` = 2 * MACs / time, MACs(forward) = N*Cout*Ho*Wo*Cin*k*k;
  forward_backward counts forward + weight gradient (+ input gradient when
  computed), i.e. 2x or 3x the forward MACs (bias terms ignored).
* ``linear``: 256->120, 120->84, 84->10 at batch 128 (``F.linear`` with bias;
  "shape" = input shape, "out_features"); MACs = N*in*out, forward_backward =
  3x (weight and input gradients).
* ``train_step``, "forward_backward", models "bn-lenet" (nn.BatchNorm) and
  "bn-lenet-scratch" (the chapter's hand-written BatchNorm), built exactly as
  in ``pytorch_bnlenet.py``: one full SGD(lr 0.1) step at batch 128 on
  preloaded random data: forward, mean cross-entropy, zero_grad, backward,
  step. Reports ``ms`` and ``examples_per_sec`` = 128 / seconds.

Output: ONE JSON object on stdout,

    {"impl": "pytorch", "torch_version", "threads", "cpu",
     "reps", "min_sample_ms",
     "kernels": [{"kernel", "impl", "pass", "shape", "ms", "gbs", "gflops",
                  ["out_channels" | "out_features" | "model",
                   "examples_per_sec"], "inner"}, ...]}

(``gbs`` / ``gflops`` are null where they do not apply.) Progress goes to
stderr.

Run (from the repository root)
------------------------------

    venv/bin/python bench/compare/pytorch_kernels.py --threads 2
    # quick smoke test
    venv/bin/python bench/compare/pytorch_kernels.py --reps 3 --min-sample-ms 0.5

Only torch, numpy and the standard library are used.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in bench/compare
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_bnlenet import build_model, set_threads  # noqa: E402

BN_SHAPES = [(128, 6, 24, 24), (128, 16, 8, 8), (128, 120), (128, 84),
             (64, 64, 56, 56), (32, 256, 14, 14)]
LN_SHAPES = [(4096, 768), (128, 120)]
# (input shape, out_channels, kernel, input gradient needed)
CONV_CASES = [((128, 1, 28, 28), 6, 5, False), ((128, 6, 12, 12), 16, 5, True)]
# (batch, in, out)
LINEAR_CASES = [(128, 256, 120), (128, 120, 84), (128, 84, 10)]
TRAIN_BATCH = 128


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def time_fn(fn, reps, min_sample_s, warmup_s=0.05):
    """Median per-call seconds of ``fn`` over ``reps`` samples (see module doc)."""
    # warm-up: two untimed calls, then timed single calls for ~warmup_s; the
    # FASTEST of those sets ``inner`` (a preempted call must not shrink it)
    fn()
    fn()
    fastest = float("inf")
    start = time.perf_counter()
    for _ in range(10000):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        fastest = min(fastest, t1 - t0)
        if t1 - start >= warmup_s:
            break
    inner = max(1, int(min_sample_s / max(fastest, 1e-9) + 0.999))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples), inner


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def entry(kernel, impl, pas, shape, sec, inner, gbytes=None, gflop=None, **extra):
    e = {
        "kernel": kernel,
        "impl": impl,
        "pass": pas,
        "shape": list(shape),
        "ms": sec * 1e3,
        "gbs": (gbytes / sec) if gbytes is not None else None,
        "gflops": (gflop / sec) if gflop is not None else None,
    }
    e.update(extra)
    e["inner"] = inner
    return e


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_batch_norm(reps, min_s, gen):
    out = []
    for shape in BN_SHAPES:
        c = shape[1]
        n = numel(shape)
        x = torch.randn(shape, generator=gen)
        dy = torch.randn(shape, generator=gen)
        rm, rv = torch.zeros(c), torch.ones(c)
        w, b = torch.ones(c), torch.zeros(c)

        def fwd():
            with torch.no_grad():
                F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)

        s, inner = time_fn(fwd, reps, min_s)
        out.append(entry("batch_norm", "pytorch", "forward", shape, s, inner,
                         gbytes=2 * 4 * n / 1e9))

        xg = x.clone().requires_grad_(True)
        wg = w.clone().requires_grad_(True)
        bg = b.clone().requires_grad_(True)

        def fwd_bwd():
            xg.grad = None
            wg.grad = None
            bg.grad = None
            y = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=0.1, eps=1e-5)
            y.backward(dy)

        s, inner = time_fn(fwd_bwd, reps, min_s)
        out.append(entry("batch_norm", "pytorch", "forward_backward", shape, s, inner,
                         gbytes=5 * 4 * n / 1e9))
        log(f"batch_norm {shape}: fwd {out[-2]['ms']:.4f} ms, fwd+bwd {out[-1]['ms']:.4f} ms")
    return out


def bench_layer_norm(reps, min_s, gen):
    out = []
    for shape in LN_SHAPES:
        d = shape[-1]
        n = numel(shape)
        x = torch.randn(shape, generator=gen).requires_grad_(True)
        dy = torch.randn(shape, generator=gen)
        w = torch.ones(d, requires_grad=True)
        b = torch.zeros(d, requires_grad=True)

        def fwd_bwd():
            x.grad = None
            w.grad = None
            b.grad = None
            y = F.layer_norm(x, (d,), w, b, eps=1e-5)
            y.backward(dy)

        s, inner = time_fn(fwd_bwd, reps, min_s)
        out.append(entry("layer_norm", "pytorch", "forward_backward", shape, s, inner,
                         gbytes=5 * 4 * n / 1e9))
        log(f"layer_norm {shape}: fwd+bwd {out[-1]['ms']:.4f} ms")
    return out


def bench_conv2d(reps, min_s, gen):
    out = []
    for shape, cout, k, input_grad in CONV_CASES:
        nb, cin, h, wd = shape
        ho, wo = h - k + 1, wd - k + 1
        macs = nb * cout * ho * wo * cin * k * k
        x = torch.rand(shape, generator=gen)
        weight = torch.empty(cout, cin, k, k)
        torch.nn.init.xavier_uniform_(weight, generator=gen)
        bias = (torch.rand(cout, generator=gen) - 0.5) * 0.2
        dy = torch.randn(nb, cout, ho, wo, generator=gen)

        def fwd():
            with torch.no_grad():
                F.conv2d(x, weight, bias)

        s, inner = time_fn(fwd, reps, min_s)
        out.append(entry("conv2d", "pytorch", "forward", shape, s, inner,
                         gflop=2 * macs / 1e9, out_channels=cout))

        xg = x.clone().requires_grad_(input_grad)
        wg = weight.clone().requires_grad_(True)
        bg = bias.clone().requires_grad_(True)

        def fwd_bwd():
            xg.grad = None
            wg.grad = None
            bg.grad = None
            y = F.conv2d(xg, wg, bg)
            y.backward(dy)

        s, inner = time_fn(fwd_bwd, reps, min_s)
        mult = 3 if input_grad else 2
        out.append(entry("conv2d", "pytorch", "forward_backward", shape, s, inner,
                         gflop=2 * mult * macs / 1e9, out_channels=cout,
                         input_grad=input_grad))
        log(f"conv2d {shape}->{cout}: fwd {out[-2]['ms']:.4f} ms, fwd+bwd {out[-1]['ms']:.4f} ms")
    return out


def bench_linear(reps, min_s, gen):
    out = []
    for nb, fin, fout in LINEAR_CASES:
        shape = (nb, fin)
        macs = nb * fin * fout
        x = torch.rand(shape, generator=gen)
        weight = torch.empty(fout, fin)
        torch.nn.init.xavier_uniform_(weight, generator=gen)
        bias = (torch.rand(fout, generator=gen) - 0.5) * 0.2
        dy = torch.randn(nb, fout, generator=gen)

        def fwd():
            with torch.no_grad():
                F.linear(x, weight, bias)

        s, inner = time_fn(fwd, reps, min_s)
        out.append(entry("linear", "pytorch", "forward", shape, s, inner,
                         gflop=2 * macs / 1e9, out_features=fout))

        xg = x.clone().requires_grad_(True)
        wg = weight.clone().requires_grad_(True)
        bg = bias.clone().requires_grad_(True)

        def fwd_bwd():
            xg.grad = None
            wg.grad = None
            bg.grad = None
            y = F.linear(xg, wg, bg)
            y.backward(dy)

        s, inner = time_fn(fwd_bwd, reps, min_s)
        out.append(entry("linear", "pytorch", "forward_backward", shape, s, inner,
                         gflop=2 * 3 * macs / 1e9, out_features=fout))
        log(f"linear {fin}->{fout}: fwd {out[-2]['ms']:.4f} ms, fwd+bwd {out[-1]['ms']:.4f} ms")
    return out


def bench_train_step(reps, min_s, gen):
    out = []
    x = torch.rand(TRAIN_BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (TRAIN_BATCH,), generator=gen)
    for model, bn in (("bn-lenet", "builtin"), ("bn-lenet-scratch", "scratch")):
        net = build_model("bn-lenet", bn, seed=0)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def step():
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        s, inner = time_fn(step, reps, min_s)
        out.append(entry("train_step", "pytorch", "forward_backward",
                         (TRAIN_BATCH, 1, 28, 28), s, inner, model=model,
                         examples_per_sec=TRAIN_BATCH / s))
        log(f"train_step {model}: {out[-1]['ms']:.4f} ms")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch eager timings of normlab bench's kernels; prints one JSON object.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=30, help="timed samples per kernel (median)")
    p.add_argument("--min-sample-ms", type=float, default=2.0,
                   help="each sample repeats the call until it lasts at least this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None,
                   help="comma-separated subset of batch_norm,layer_norm,conv2d,linear,train_step")
    args = p.parse_args(argv)
    if args.reps < 1 or args.threads < 1:
        p.error("--reps and --threads must be positive")

    set_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    min_s = args.min_sample_ms / 1e3
    groups = [("batch_norm", bench_batch_norm), ("layer_norm", bench_layer_norm),
              ("conv2d", bench_conv2d), ("linear", bench_linear),
              ("train_step", bench_train_step)]
    wanted = set(args.only.split(",")) if args.only else None
    kernels = []
    for name, fn in groups:
        if wanted is None or name in wanted:
            kernels.extend(fn(args.reps, min_s, gen))

    print(json.dumps({
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "reps": args.reps,
        "min_sample_ms": args.min_sample_ms,
        "kernels": kernels,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
