#!/usr/bin/env python3
"""The network suite, normlab against PyTorch, per instruction set.

For each instruction set the machine has (AVX-512, AVX2; `--isa` picks),
runs `normlab bench --suite --json` with NORMLAB_ISA set, and
`pytorch_suite.py` capped to the same level (ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA), alternately, `--rounds` times each, one process at a
time, with the same `--threads`. Reports per network and ISA the median
training-step time of each, the ratio (PyTorch ms / normlab ms: above 1,
normlab is faster), normlab's examples/s, GFLOP/s and share of the FMA peak
it measured in the same run.

Output: a Markdown table on stdout, and under `--out DIR` the raw JSON of
every run (`normlab-<isa>-<round>.json`, `pytorch-<isa>-<round>.jsonl`) and
`report.md`.

    venv/bin/python bench/compare/suite.py --threads 2 --rounds 3

Only the standard library is used here; `--python` names the interpreter
that has torch (default: this one).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

from compare import cpu_model  # noqa: E402 (this directory is on sys.path when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# PyTorch's names for the same caps
TORCH_CAPS = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run(cmd, env_extra, path):
    env = dict(os.environ, **env_extra)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    with open(path, "w") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each side per ISA")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed steps per network and run")
    p.add_argument("--isa", default=None, help="comma-separated: avx512,avx2 (default: what the CPU has)")
    p.add_argument("--normlab", default=os.path.join(REPO, "target", "release", "normlab"))
    p.add_argument("--python", default=sys.executable, help="interpreter that has torch")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    flags = cpu_flags()
    isas = a.isa.split(",") if a.isa else [i for i, f in (("avx512", "avx512f"), ("avx2", "avx2")) if f in flags]
    out = a.out or os.path.join(HERE, "suite-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)

    rows = {}  # (isa, network) -> dict of lists
    peak = {}
    for isa in isas:
        for r in range(a.rounds):
            nl = run([a.normlab, "bench", "--suite", "--json", "--threads", str(a.threads), "--budget", str(a.budget)],
                     {"NORMLAB_ISA": isa}, os.path.join(out, f"normlab-{isa}-{r}.json"))
            doc = json.loads(nl)
            if doc.get("isa") != isa:
                sys.exit(f"error: normlab ran at {doc.get('isa')} when asked for {isa}")
            peak.setdefault(isa, []).append(doc["machine"]["fma_gflops"])
            for t in doc["suite"]:
                row = rows.setdefault((isa, t["network"]), {"nl": [], "pt": [], "gflops": [], "frac": [], "ex": []})
                row["nl"].append(t["step_ms"])
                row["gflops"].append(t["gflops"])
                row["frac"].append(t["fraction_of_peak"])
                row["ex"].append(t["examples_per_sec"])
            names = ",".join(t["network"] for t in doc["suite"])
            pt = run([a.python, os.path.join(HERE, "pytorch_suite.py"), "--threads", str(a.threads),
                      "--budget", str(a.budget), "--networks", names],
                     TORCH_CAPS[isa], os.path.join(out, f"pytorch-{isa}-{r}.jsonl"))
            for line in pt.splitlines():
                t = json.loads(line)
                rows[(isa, t["network"])]["pt"].append(t["step_ms"])
                rows[(isa, t["network"])]["capability"] = t["capability"]
                rows[(isa, t["network"])]["torch"] = t["torch"]

    med = statistics.median
    lines = [
        f"CPU: {cpu_model()}; {a.threads} threads; {a.rounds} alternating rounds per ISA, medians; "
        f"PyTorch {next(iter(rows.values())).get('torch', '?')}",
        "",
        "| network | ISA (normlab / PyTorch) | normlab ms/step | PyTorch ms/step | ratio | examples/s | GFLOP/s | % of FMA peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (isa, name), row in rows.items():
        nl, pt = med(row["nl"]), med(row["pt"])
        lines.append(
            f"| {name} | {isa} / {row.get('capability', '?')} | {nl:.2f} | {pt:.2f} | {pt / nl:.2f}x | "
            f"{med(row['ex']):.0f} | {med(row['gflops']):.1f} | {100 * med(row['frac']):.0f}% |"
        )
    lines.append("")
    lines.append("FMA peak measured by normlab in the same runs (GFLOP/s): "
                 + ", ".join(f"{isa} {med(v):.0f}" for isa, v in peak.items()))
    report = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
