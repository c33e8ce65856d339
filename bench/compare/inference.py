#!/usr/bin/env python3
"""Inference speed: normlab against ONNX Runtime and PyTorch eager, on the
same networks, weights, batches and threads, in one table.

For each thread count (`--threads`, default 1,2) and round (`--rounds`):

1. `normlab --threads T bench --inference --json --onnx-dir DIR` times
   eval-mode forward passes of the suite networks (bn-lenet, vgg-bn,
   resnet-bn, mlp-bn; see crates/cli/src/bench/suite.rs) at each batch,
   unfolded (batch norm fused with its neighbours) and folded
   (`Sequential::fold_batch_norms`), and writes the very networks it timed
   as `<network>.onnx` and `<network>-folded.onnx` into DIR.
2. ONNX Runtime runs both exports (intra-op threads T, one inter-op
   thread, sequential execution, all graph optimizations): its row is the
   faster of the two (its optimizer folds batch norm itself, so they are
   usually within noise of each other).
3. PyTorch eager runs the twins of the networks in pytorch_suite.py
   (`net.eval()`, `torch.inference_mode()`, `torch.set_num_threads(T)`),
   in a child process started with `--torch-python` (the interpreter that
   has torch; PyTorch is left out when none is given).

Every time is the median of repeated forward passes on one fixed batch
after warm-up; over several rounds the median of the rounds' medians. The
three take turns within a round, one process at a time, so a stretch of
noise from elsewhere falls on all of them. The table: images/s and median
latency of each, normlab's best variant over ONNX Runtime (images/s: above
1, normlab is faster; latency: below 1, normlab is faster), and folded
over unfolded.

Requirements: this interpreter needs `onnxruntime` and `numpy` (nothing of
normlab's build or CI needs them); `--torch-python` needs `torch`. Build
normlab first (`cargo build --release`). The one command:

    PY_ORT/bin/python bench/compare/inference.py --torch-python PY_TORCH/bin/python \\
        --threads 1,2 --rounds 3 --out inference.md

prints the table and writes it, with the machine, versions and load, as
Markdown to `--out`; `--keep DIR` keeps the ONNX models and raw JSON.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NETWORKS = ["bn-lenet", "vgg-bn", "resnet-bn", "mlp-bn"]
# one image's shape, as in the suite
INPUTS = {"bn-lenet": (1, 28, 28), "vgg-bn": (1, 28, 28), "resnet-bn": (3, 32, 32), "mlp-bn": (1, 28, 28)}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def time_median(call, budget, min_calls=5, warmup=0.2):
    """Median seconds of `call()` over ~`budget` s (at least `min_calls`),
    after ~`warmup`·budget s (at least 3 calls) of warm-up."""
    start = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - start < warmup * budget:
        call()
        n += 1
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget and len(times) < 100_000):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def random_batch(np, batch, shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((batch,) + tuple(shape), dtype=np.float32) * 2 - 1).astype(np.float32)


def ort_run(onnx_dir, networks, batches, threads, budget):
    """ONNX Runtime on both exports of each network: one dict per
    (network, batch) with the faster variant's time."""
    import numpy as np
    import onnxruntime as ort

    out = []
    for name in networks:
        sessions = {}
        for variant, file in (("unfolded", f"{name}.onnx"), ("folded", f"{name}-folded.onnx")):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[variant] = ort.InferenceSession(
                os.path.join(onnx_dir, file), so, providers=["CPUExecutionProvider"])
        for batch in batches:
            x = random_batch(np, batch, INPUTS[name], 1)
            best = None
            for variant, sess in sessions.items():
                feed = {"images": x}
                secs, calls = time_median(lambda: sess.run(["logits"], feed), budget / 2)
                if best is None or secs < best["latency_ms"] / 1e3:
                    best = {"network": name, "batch": batch, "threads": threads, "variant": variant,
                            "latency_ms": secs * 1e3, "images_per_sec": batch / secs, "repeats": calls}
            out.append(best)
    return out


def torch_worker(argv):
    """`--torch-worker`: PyTorch eager, JSON lines on stdout (run with the
    interpreter that has torch)."""
    p = argparse.ArgumentParser()
    p.add_argument("--torch-worker", action="store_true")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--networks", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--budget", type=float, required=True)
    a = p.parse_args(argv)
    import torch

    sys.path.insert(0, HERE)
    import pytorch_suite

    torch.set_num_threads(a.threads)
    for name in a.networks.split(","):
        torch.manual_seed(0)
        net, _, shape = pytorch_suite.NETWORKS[name]()
        net.eval()
        for batch in [int(b) for b in a.batches.split(",")]:
            x = torch.rand((batch,) + tuple(shape)) * 2 - 1
            with torch.inference_mode():
                secs, calls = time_median(lambda: net(x), a.budget)
            print(json.dumps({"network": name, "batch": batch, "threads": a.threads, "latency_ms": secs * 1e3,
                              "images_per_sec": batch / secs, "repeats": calls, "torch": torch.__version__,
                              "capability": torch.backends.cpu.get_cpu_capability(),
                              "torch_threads": torch.get_num_threads()}), flush=True)


def run(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-800:]}")
    return proc.stdout


def fmt_rate(v):
    return f"{v:,.0f}" if v is not None else "-"


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--torch-worker" in argv:
        return torch_worker(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--rounds", type=int, default=3, help="rounds of all three, taking turns (median of medians)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per configuration and side")
    p.add_argument("--normlab", default=os.path.join(REPO, "target", "release", "normlab"))
    p.add_argument("--torch-python", default=None, help="interpreter that has torch (PyTorch is skipped without it)")
    p.add_argument("--out", default=None, help="write the table, with machine and versions, as Markdown here")
    p.add_argument("--keep", default=None, help="keep the ONNX models and raw JSON in this directory")
    a = p.parse_args(argv)

    try:
        import numpy  # noqa: F401
        import onnxruntime
    except ImportError as e:
        sys.exit(f"error: this interpreter lacks {e.name}: run the script with one that has onnxruntime and numpy")
    if not os.access(a.normlab, os.X_OK):
        sys.exit(f"error: no normlab binary at {a.normlab}: run `cargo build --release` first, or give --normlab")
    threads = [int(t) for t in a.threads.split(",")]
    networks = a.networks.split(",")
    if bad := [n for n in networks if n not in NETWORKS]:
        sys.exit(f"error: --networks: unknown {', '.join(bad)}; choose from {', '.join(NETWORKS)}")
    batches = [int(b) for b in a.batches.split(",")]
    work = a.keep or tempfile.mkdtemp(prefix="normlab-inference-")
    os.makedirs(work, exist_ok=True)

    # (side, network, batch, threads) -> list of (latency_ms, images_per_sec) per round
    rows = {}
    meta = {"ort": onnxruntime.__version__, "torch": None, "capability": None, "normlab": None}
    load_before = os.getloadavg()
    started = time.time()
    try:
        for r in range(a.rounds):
            for t in threads:
                onnx_dir = os.path.join(work, f"onnx-t{t}-r{r}")
                out = run([a.normlab, "--threads", str(t), "bench", "--inference", "--json", "--onnx-dir", onnx_dir,
                           "--networks", ",".join(networks), "--batches", ",".join(map(str, batches)),
                           "--budget", str(a.budget), "--rounds", "2"], "normlab bench --inference")
                with open(os.path.join(work, f"normlab-t{t}-r{r}.json"), "w") as f:
                    f.write(out)
                report = json.loads(out)
                meta["normlab"] = {k: report[k] for k in ("normlab_version", "isa", "isa_detected")}
                for e in report["inference"]:
                    key = (f"normlab-{e['variant']}", e["network"], e["batch"], t)
                    rows.setdefault(key, []).append((e["latency_ms"], e["images_per_sec"]))
                for e in ort_run(onnx_dir, networks, batches, t, a.budget):
                    rows.setdefault(("ort", e["network"], e["batch"], t), []).append(
                        (e["latency_ms"], e["images_per_sec"]))
                    rows.setdefault(("ort-variant", e["network"], e["batch"], t), []).append(e["variant"])
                if a.torch_python:
                    out = run([a.torch_python, os.path.abspath(__file__), "--torch-worker", "--threads", str(t),
                               "--networks", ",".join(networks), "--batches", ",".join(map(str, batches)),
                               "--budget", str(a.budget)], "the PyTorch worker")
                    with open(os.path.join(work, f"pytorch-t{t}-r{r}.jsonl"), "w") as f:
                        f.write(out)
                    for line in out.splitlines():
                        e = json.loads(line)
                        meta["torch"], meta["capability"] = e["torch"], e["capability"]
                        rows.setdefault(("torch", e["network"], e["batch"], t), []).append(
                            (e["latency_ms"], e["images_per_sec"]))
                print(f"round {r + 1}/{a.rounds}, {t} thread(s): done", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    def med(side, n, b, t):
        v = rows.get((side, n, b, t))
        if not v:
            return None, None
        return statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)

    header = ["network", "batch", "threads", "normlab unfolded img/s (ms)", "normlab folded img/s (ms)",
              "ORT img/s (ms)", "PyTorch img/s (ms)", "normlab/ORT img/s", "normlab/ORT latency",
              "folded/unfolded img/s"]
    table = []
    for n in networks:
        for b in batches:
            for t in threads:
                u, f, o, pt = (med(s, n, b, t) for s in ("normlab-unfolded", "normlab-folded", "ort", "torch"))
                best = max((x for x in (u, f) if x[1] is not None), key=lambda x: x[1])
                variants = rows.get(("ort-variant", n, b, t), [])
                ort_note = "" if not variants else (" f" if variants.count("folded") * 2 > len(variants) else " u")
                table.append([
                    n, str(b), str(t),
                    f"{fmt_rate(u[1])} ({fmt_ms(u[0])})", f"{fmt_rate(f[1])} ({fmt_ms(f[0])})",
                    f"{fmt_rate(o[1])} ({fmt_ms(o[0])}){ort_note}",
                    f"{fmt_rate(pt[1])} ({fmt_ms(pt[0])})" if pt[1] else "-",
                    f"{best[1] / o[1]:.2f}" if o[1] else "-",
                    f"{best[0] / o[0]:.2f}" if o[0] else "-",
                    f"{f[1] / u[1]:.2f}",
                ])
    widths = [max(len(r[i]) for r in table + [header]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in table]
    nl = meta["normlab"] or {}
    notes = [
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs; normlab {nl.get('normlab_version')} "
        f"(ISA {nl.get('isa')}, detected {nl.get('isa_detected')}); ONNX Runtime {meta['ort']} "
        "(CPUExecutionProvider, intra-op threads = threads, 1 inter-op thread, sequential, ORT_ENABLE_ALL); "
        + (f"PyTorch {meta['torch']} eager (capability {meta['capability']}, inference_mode)."
           if meta["torch"] else "PyTorch not run (no --torch-python)."),
        f"Median over {a.rounds} round(s) of per-round medians, {a.budget} s of calls per configuration; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"{time.time() - started:.0f} s in all.",
        "normlab/ORT compares normlab's faster variant; ORT's row is the faster of its two exports "
        "(f: folded, u: unfolded, mostly).",
    ]
    text = "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
    print(text)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
