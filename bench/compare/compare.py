#!/usr/bin/env python3
"""normlab against PyTorch eager on the same machine and thread count.

What it does
------------
Runs, one after another (never two at once), with the same ``--threads T``
(default 2):

  (a) ``normlab bench --json --threads T``            kernel timings + machine limits
  (b) ``pytorch_kernels.py --threads T``              PyTorch's equivalents
  (c) ``normlab train --json --quiet --threads T``    --model bn-lenet, then bn-lenet-scratch
  (d) ``pytorch_bnlenet.py --threads T``              --bn builtin, then --bn scratch

(c) and (d) get the same ``--epochs`` (default 10) and, when given,
``--limit-train`` / ``--limit-val`` / ``--data-dir``. ``--bench-budget S`` and
``--bench-no-epoch`` go to (a) as ``--budget S`` / ``--no-epoch``;
``--kernel-reps N`` and ``--min-sample-ms`` go to (b). Every run goes through
``/usr/bin/time -v`` when that exists, to record its peak resident memory
(else ``os.wait4``'s per-child rusage, which is the same number); the load
average before each run is recorded too, so a busy machine shows in the
report. A run that fails is reported and the others still run; if
``normlab bench`` does not exist yet (exit 2, "unrecognized subcommand") the
report says so and shows the PyTorch kernel timings alone.

Output
------
A Markdown report on stdout (also ``report.md``):

* the machine: CPU model (/proc/cpuinfo), logical CPUs, threads, normlab's
  measured FMA peak (GFLOP/s) and triad bandwidth (GB/s), load average;
* kernels: kernel, pass, shape, normlab impl, normlab ms, PyTorch ms,
  speed-up = PyTorch ms / normlab ms (> 1: normlab is faster), normlab
  GB/s or GFLOP/s and its fraction of the measured limit (triad bandwidth or
  FMA peak), PyTorch's GB/s or GFLOP/s;
* training: implementation, s/epoch (median), examples/s, final val_acc,
  final train_loss, peak RSS, speed-up vs PyTorch built-in BN
  (= PyTorch built-in s/epoch / this s/epoch).

Under ``--out DIR`` (default ``bench/compare/results-<date>-<time>``) it keeps
the raw output of every run: ``normlab-bench.json``, ``pytorch-kernels.json``,
``normlab-train-bn-lenet.jsonl``, ``normlab-train-bn-lenet-scratch.jsonl``,
``pytorch-train-builtin.jsonl``, ``pytorch-train-scratch.jsonl`` (stdout
verbatim), ``*.stderr.txt``, ``normlab-runs/`` (normlab's own --out
directories), ``runs.json`` (command, exit code, wall time, peak RSS, load
average of every run) and ``report.md``.

Run (from the repository root, in a virtual environment that has torch)
-----------------------------------------------------------------------

    python3 -m venv venv && venv/bin/pip install torch numpy

    venv/bin/python bench/compare/compare.py                # the real thing
    # smoke test only (NOT a measurement):
    venv/bin/python bench/compare/compare.py --epochs 1 \
        --limit-train 2048 --limit-val 1000 --kernel-reps 3 \
        --bench-budget 0.05 --bench-no-epoch --out /tmp/cmp

Only the standard library is used here (the PyTorch scripts need torch and
numpy; they run with ``--python``, default this interpreter).
"""

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GNU_TIME = "/usr/bin/time"


# --------------------------------------------------------------------------
# Running one command


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run(name, cmd, out_dir, stdout_name, env=None, timeout=None):
    """Runs ``cmd`` alone; stdout -> out_dir/stdout_name, stderr -> name.stderr.txt.

    Returns a dict: name, cmd, rc, wall_s, maxrss_kb, maxrss_source,
    loadavg_before, stdout, stderr (paths), stderr_tail, timed_out.
    """
    stdout_path = os.path.join(out_dir, stdout_name)
    stderr_path = os.path.join(out_dir, name + ".stderr.txt")
    time_path = os.path.join(out_dir, "." + name + ".time.txt")
    use_time = os.access(GNU_TIME, os.X_OK)
    full = ([GNU_TIME, "-v", "-o", time_path] if use_time else []) + list(cmd)
    info = {"name": name, "cmd": " ".join(shlex.quote(c) for c in cmd),
            "loadavg_before": loadavg(), "timed_out": False}
    print(f"[compare] {name}: {info['cmd']}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
            p = subprocess.Popen(full, stdout=so, stderr=se, env=env, cwd=REPO,
                                 start_new_session=True)
            timer = None
            if timeout:
                def kill():
                    info["timed_out"] = True
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                timer = threading.Timer(timeout, kill)
                timer.start()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            if timer:
                timer.cancel()
    except OSError as e:
        info.update(rc=None, wall_s=0.0, maxrss_kb=None, maxrss_source=None,
                    stdout=stdout_path, stderr=stderr_path, stderr_tail=f"could not start: {e}")
        return info
    info["wall_s"] = time.perf_counter() - start
    rc = p.returncode
    maxrss, source = ru.ru_maxrss, "os.wait4"  # kB on Linux, includes descendants
    if use_time:
        try:
            with open(time_path) as f:
                text = f.read()
            m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
            if m:
                maxrss, source = int(m.group(1)), "/usr/bin/time -v"
            # GNU time exits with the command's status (128+signal if killed)
            m = re.search(r"Exit status:\s*(-?\d+)", text)
            if m:
                rc = int(m.group(1))
            os.remove(time_path)
        except OSError:
            pass
    with open(stderr_path, "rb") as f:
        tail = f.read()[-2000:].decode("utf-8", "replace")
    info.update(rc=rc, maxrss_kb=maxrss, maxrss_source=source, stdout=stdout_path,
                stderr=stderr_path, stderr_tail=tail)
    print(f"[compare] {name}: exit {rc}, {info['wall_s']:.1f} s, peak RSS "
          f"{maxrss / 1024:.0f} MiB", file=sys.stderr, flush=True)
    return info


# --------------------------------------------------------------------------
# Parsing


def parse_json_output(path):
    """Whole-file JSON, else JSON lines; returns a list of objects."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    text = text.strip()
    if not text:
        return []
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, list) else [obj]
    except ValueError:
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            out.extend(obj if isinstance(obj, list) else [obj])
    return out


def parse_bench(path):
    """(kernels, machine, top-level dict) from a bench output (normlab or pytorch)."""
    kernels, machine, top = [], {}, {}
    for obj in parse_json_output(path):
        if not isinstance(obj, dict):
            continue
        if "kernels" in obj and isinstance(obj["kernels"], list):
            kernels.extend(k for k in obj["kernels"] if isinstance(k, dict))
            top.update({k: v for k, v in obj.items() if k != "kernels"})
        elif "kernel" in obj:
            kernels.append(obj)
        else:
            top.update(obj)
        if isinstance(obj.get("machine"), dict):
            machine.update(obj["machine"])
    for k in ("fma_gflops", "triad_gbs"):
        if k in top and k not in machine:
            machine[k] = top[k]
    return kernels, machine, top


def parse_train(path):
    """(epoch lines, summary or None)."""
    epochs, summary = [], None
    for obj in parse_json_output(path):
        if isinstance(obj, dict):
            if obj.get("summary") is True:
                summary = obj
            elif "epoch" in obj:
                epochs.append(obj)
    return epochs, summary


def kernel_key(e):
    shape = tuple(e.get("shape") or ())
    return (e.get("kernel"), e.get("pass"), shape, e.get("model"))


# --------------------------------------------------------------------------
# Formatting


def fmt(v, spec=".3f", none="–"):
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.4f}" if v < 1 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def fmt_shape(e):
    s = "×".join(str(d) for d in e.get("shape") or [])
    if e.get("out_channels") is not None:
        s += f" → {e['out_channels']} ch"
    if e.get("out_features") is not None:
        s += f" → {e['out_features']}"
    if e.get("model"):
        s = f"{e['model']}, {s}"
    return s


def rate(e):
    """(value, unit, kind) of an entry's throughput."""
    if e is None:
        return None, "", None
    if e.get("kernel") == "train_step" and e.get("examples_per_sec") is not None:
        return e["examples_per_sec"], "ex/s", "eps"
    if e.get("gbs") is not None:
        return e["gbs"], "GB/s", "gbs"
    if e.get("gflops") is not None:
        return e["gflops"], "GFLOP/s", "gflops"
    if e.get("examples_per_sec") is not None:
        return e["examples_per_sec"], "ex/s", "eps"
    return None, "", None


def fmt_rate(e):
    v, unit, kind = rate(e)
    if v is None:
        return "–"
    return f"{v:.0f} {unit}" if kind == "eps" else f"{v:.2f} {unit}"


def fraction(e, machine):
    """Fraction of the measured limit: normlab's own ``fraction_of_limit`` if
    it reports one, else GB/s / triad_gbs or GFLOP/s / fma_gflops."""
    v, _, kind = rate(e)
    if kind == "eps":
        return "–"
    f = e.get("fraction_of_limit")
    if isinstance(f, (int, float)) and not isinstance(f, bool):
        return f"{100.0 * f:.0f} %"
    if v is None:
        return "–"
    limit = {"gbs": machine.get("triad_gbs"), "gflops": machine.get("fma_gflops")}.get(kind)
    if not limit:
        return "–"
    return f"{100.0 * v / limit:.0f} %"


def kernel_table(nl_kernels, pt_kernels, machine):
    pt_by_key = {}
    for e in pt_kernels:
        pt_by_key.setdefault(kernel_key(e), e)
    nl_by_key = {}
    for e in nl_kernels:
        nl_by_key.setdefault(kernel_key(e), []).append(e)
    rows = [
        "| kernel | pass | shape | normlab impl | normlab ms | PyTorch ms | speed-up | "
        "normlab rate | % of limit | PyTorch rate |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    seen = set()
    order = [kernel_key(e) for e in pt_kernels]
    order += [k for k in (kernel_key(e) for e in nl_kernels) if k not in pt_by_key]
    for key in order:
        if key in seen:
            continue
        seen.add(key)
        pt = pt_by_key.get(key)
        nls = nl_by_key.get(key) or [None]
        for nl in nls:
            ref = nl or pt
            pt_ms = pt.get("ms") if pt else None
            nl_ms = nl.get("ms") if nl else None
            speed = f"{pt_ms / nl_ms:.2f}×" if pt_ms and nl_ms else "–"
            rows.append("| " + " | ".join([
                str(ref.get("kernel")), str(ref.get("pass")), fmt_shape(ref),
                str(nl.get("impl")) if nl else "–",
                fmt_ms(nl_ms), fmt_ms(pt_ms), speed,
                fmt_rate(nl), fraction(nl, machine) if nl else "–", fmt_rate(pt),
            ]) + " |")
    return "\n".join(rows)


def mib(kb):
    return f"{kb / 1024:.0f} MiB" if kb else "–"


# --------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Runs normlab and PyTorch eager one after another and prints a Markdown report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="passed to both trainers")
    p.add_argument("--kernel-reps", type=int, default=None,
                   help="pytorch_kernels.py --reps (timed samples per kernel; default its own)")
    p.add_argument("--bench-budget", type=float, default=None,
                   help="normlab bench --budget (seconds of repetitions per measurement; "
                        "default its own)")
    p.add_argument("--bench-no-epoch", action="store_true",
                   help="normlab bench --no-epoch (skip its full training epoch)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="pytorch_kernels.py --min-sample-ms (default: its own)")
    p.add_argument("--normlab", default=os.path.join(REPO, "target", "release", "normlab"))
    p.add_argument("--normlab-bench-args", default="",
                   help="extra arguments for normlab bench (one shell-quoted string)")
    p.add_argument("--python", default=sys.executable, help="interpreter that has torch")
    p.add_argument("--out", default=None,
                   help="results directory (default bench/compare/results-<date>-<time>)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default none)")
    p.add_argument("--skip-kernels", action="store_true", help="only the training runs")
    p.add_argument("--skip-train", action="store_true", help="only the kernel runs")
    args = p.parse_args(argv)

    now = datetime.datetime.now()
    out = os.path.abspath(args.out or os.path.join(
        HERE, "results-" + now.strftime("%Y-%m-%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    T = str(args.threads)
    py_env = dict(os.environ, OMP_NUM_THREADS=T, MKL_NUM_THREADS=T)
    notes, runs = [], []

    def record(info):
        runs.append(info)
        if info.get("timed_out"):
            notes.append(f"`{info['name']}` was killed after --timeout {args.timeout} s.")
        elif info.get("rc") != 0:
            tail = (info.get("stderr_tail") or "").strip().splitlines()[-3:]
            notes.append(f"`{info['name']}` failed (exit {info.get('rc')}): "
                         + " / ".join(tail))
        return info

    normlab_version = None
    try:
        normlab_version = subprocess.run([args.normlab, "--version"], capture_output=True,
                                         text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError) as e:
        notes.append(f"could not run `{args.normlab} --version`: {e}")

    # (a) normlab bench, (b) pytorch_kernels.py
    nl_kernels, machine, pt_kernels, pt_top, nl_top = [], {}, [], {}, {}
    bench_available = None
    if not args.skip_kernels:
        opt = []
        if args.bench_budget is not None:
            opt += ["--budget", str(args.bench_budget)]
        if args.bench_no_epoch:
            opt += ["--no-epoch"]
        if args.data_dir:
            opt += ["--data-dir", args.data_dir]
        opt += shlex.split(args.normlab_bench_args)
        cmd = [args.normlab, "bench", "--json", "--threads", T] + opt
        info = run("normlab-bench", cmd, out, "normlab-bench.json", timeout=args.timeout)
        if info.get("rc") == 2 and opt and "unexpected argument" in (info.get("stderr_tail") or ""):
            notes.append("normlab bench rejected `" + " ".join(opt) + "`; ran it with its "
                         "defaults instead.")
            cmd = [args.normlab, "bench", "--json", "--threads", T]
            info = run("normlab-bench", cmd, out, "normlab-bench.json", timeout=args.timeout)
        if info.get("rc") == 2 and "unrecognized subcommand" in (info.get("stderr_tail") or ""):
            bench_available = False
            runs.append(info)
            notes.append("**`normlab bench` is not available in this binary** (exit 2, "
                         "\"unrecognized subcommand\"): the kernel table shows PyTorch only, "
                         "and normlab's FMA peak / triad bandwidth are unknown.")
        else:
            bench_available = info.get("rc") == 0
            record(info)
            nl_kernels, machine, nl_top = parse_bench(info["stdout"])
            if bench_available and not nl_kernels:
                notes.append("normlab bench exited 0 but its output held no kernel entries.")

        cmd = [args.python, os.path.join(HERE, "pytorch_kernels.py"), "--threads", T]
        if args.kernel_reps:
            cmd += ["--reps", str(args.kernel_reps)]
        if args.min_sample_ms is not None:
            cmd += ["--min-sample-ms", str(args.min_sample_ms)]
        info = record(run("pytorch-kernels", cmd, out, "pytorch-kernels.json",
                          env=py_env, timeout=args.timeout))
        pt_kernels, _, pt_top = parse_bench(info["stdout"])

    # (c) normlab train, (d) pytorch_bnlenet.py
    train_rows = []  # (label, info, summary, epochs)
    if not args.skip_train:
        common = ["--epochs", str(args.epochs)]
        if args.limit_train is not None:
            common += ["--limit-train", str(args.limit_train)]
        if args.limit_val is not None:
            common += ["--limit-val", str(args.limit_val)]
        if args.data_dir:
            common += ["--data-dir", args.data_dir]
        for model in ("bn-lenet", "bn-lenet-scratch"):
            run_dir = os.path.join(out, "normlab-runs", model)
            cmd = [args.normlab, "train", "--json", "--quiet", "--threads", T,
                   "--model", model, "--out", run_dir] + common
            name = f"normlab-train-{model}"
            info = record(run(name, cmd, out, name + ".jsonl", timeout=args.timeout))
            epochs, summary = parse_train(info["stdout"])
            train_rows.append((f"normlab {model}", info, summary, epochs))
        for bn in ("builtin", "scratch"):
            cmd = [args.python, os.path.join(HERE, "pytorch_bnlenet.py"), "--threads", T,
                   "--bn", bn] + common
            name = f"pytorch-train-{bn}"
            info = record(run(name, cmd, out, name + ".jsonl", env=py_env,
                              timeout=args.timeout))
            epochs, summary = parse_train(info["stdout"])
            label = "PyTorch nn.BatchNorm (built-in)" if bn == "builtin" else \
                "PyTorch chapter's scratch BatchNorm"
            train_rows.append((label, info, summary, epochs))
        # what `import torch` alone costs in resident memory, for the RSS column
        info = run("pytorch-import-baseline", [args.python, "-c", "import torch, numpy"],
                   out, "pytorch-import-baseline.txt", env=py_env, timeout=args.timeout)
        runs.append(info)

    # ---------------------------------------------------------------- report
    for key in ("fma_gflops", "triad_gbs"):
        if key in machine and (isinstance(machine[key], bool)
                               or not isinstance(machine[key], (int, float))):
            machine.pop(key)
    lines = []
    title_time = now.strftime("%Y-%m-%d %H:%M")
    lines.append(f"# normlab vs PyTorch eager, {title_time}")
    lines.append("")
    torch_version = pt_top.get("torch_version")
    if not torch_version:
        for _, _, s, _ in train_rows:
            if s and s.get("torch_version"):
                torch_version = s["torch_version"]
    limits = []
    if machine.get("fma_gflops") is not None:
        limits.append(f"normlab-measured FMA peak {machine['fma_gflops']:.1f} GFLOP/s")
    if machine.get("triad_gbs") is not None:
        limits.append(f"triad bandwidth {machine['triad_gbs']:.1f} GB/s")
    if not limits:
        limits.append("FMA peak and triad bandwidth unknown (no normlab bench)")
    lines.append(
        f"**Machine:** {cpu_model()}, {os.cpu_count()} logical CPUs, **{T} threads** for both; "
        + ", ".join(limits) + ". "
        + f"{normlab_version or 'normlab (version unknown)'}, PyTorch {torch_version or '?'}."
    )
    la = [r["loadavg_before"] for r in runs if r.get("loadavg_before")]
    if la:
        worst = max(l[0] for l in la)
        lines.append("")
        lines.append(f"Load average (1 min) before the runs: "
                     + ", ".join(f"{r['name']} {r['loadavg_before'][0]:.2f}" for r in runs
                                 if r.get("loadavg_before"))
                     + ("." if worst < 0.5 else
                        f". **Warning: the machine was not idle (up to {worst:.2f}); "
                        "timings are not trustworthy.**"))
    if not args.skip_kernels:
        lines.append("")
        lines.append("## Kernels")
        lines.append("")
        lines.append("Median ms per call. Speed-up = PyTorch ms / normlab ms (> 1: normlab is "
                     "faster). Rates: GB/s = ideal bytes (forward 2·4·numel, "
                     "forward+backward 5·4·numel) / time, against normlab's triad bandwidth; "
                     "GFLOP/s = 2·MACs / time, against normlab's FMA peak; train_step: "
                     "examples/s. Above 100 % of the triad bandwidth means the data stayed "
                     "in cache (triad measures main memory).")
        lines.append("")
        if pt_kernels or nl_kernels:
            lines.append(kernel_table(nl_kernels, pt_kernels, machine))
        else:
            lines.append("(no kernel results)")

    if not args.skip_train:
        lines.append("")
        desc = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
        if args.limit_train:
            desc += f", first {args.limit_train} training images"
        if args.limit_val:
            desc += f", first {args.limit_val} test images"
        lines.append(f"## Training BNLeNet ({desc}, batch 128, SGD lr 0.1)")
        lines.append("")
        base = None
        for label, _, s, _ in train_rows:
            if label.startswith("PyTorch nn.BatchNorm") and s:
                base = s.get("train_seconds_per_epoch")
        lines.append("| implementation | s/epoch (median) | examples/s | final val_acc | "
                     "final train_loss | peak RSS | speed-up vs PyTorch built-in BN |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for label, info, s, _ in train_rows:
            if not s:
                lines.append(f"| {label} | failed (exit {info.get('rc')}) | – | – | – | "
                             f"{mib(info.get('maxrss_kb'))} | – |")
                continue
            spe = s.get("train_seconds_per_epoch")
            speed = f"{base / spe:.2f}×" if base and spe else "–"
            lines.append("| " + " | ".join([
                label, fmt(spe, ".3f"), fmt(s.get("train_examples_per_sec"), ",.0f"),
                fmt(s.get("val_acc"), ".4f"), fmt(s.get("train_loss"), ".4f"),
                mib(info.get("maxrss_kb")), speed]) + " |")
        bench_epochs = [e for e in nl_top.get("epochs") or [] if isinstance(e, dict)]
        if bench_epochs:
            lines.append("")
            lines.append("`normlab bench`'s own full training epoch: " + "; ".join(
                f"{e.get('model')} {fmt(e.get('seconds'), '.3f')} s "
                f"({fmt(e.get('examples_per_sec'), ',.0f')} examples/s)" for e in bench_epochs)
                + ".")
        bl = [r for r in runs if r["name"] == "pytorch-import-baseline" and r.get("rc") == 0]
        lines.append("")
        lines.append("s/epoch = wall time of the training batches only (no evaluation), median "
                     "over epochs; examples/s = training images / that median. Peak RSS of the "
                     "whole process (" + (train_rows[0][1].get("maxrss_source") or "?") + ")"
                     + (f"; `import torch, numpy` alone is {mib(bl[0]['maxrss_kb'])}."
                        if bl else "."))

    lines.append("")
    lines.append("## Notes")
    lines.append("")
    if bench_available is False and not any("not available" in n for n in notes):
        notes.append("normlab bench is not available.")
    for n in notes or ["All runs exited 0."]:
        lines.append(f"- {n}")
    lines.append(f"- Raw outputs: `{out}` (runs.json lists every command, exit code, wall "
                 "time and peak RSS).")
    lines.append("")
    lines.append("Commands, in order:")
    lines.append("")
    for r in runs:
        lines.append(f"    {r['cmd']}    # exit {r.get('rc')}, {r.get('wall_s', 0):.1f} s")
    report = "\n".join(lines) + "\n"

    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump({"date": now.isoformat(timespec="seconds"), "threads": args.threads,
                   "cpu": cpu_model(), "normlab_version": normlab_version,
                   "torch_version": torch_version, "machine": machine,
                   "normlab_bench_available": bench_available, "runs": runs},
                  f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    sys.stdout.write(report)
    failed = [r for r in runs if r.get("rc") != 0
              and not (r["name"] == "normlab-bench" and bench_available is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
