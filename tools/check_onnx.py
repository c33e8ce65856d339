#!/usr/bin/env python3
"""Checks an ONNX model written by `normlab export --onnx` against normlab.

1. `onnx.checker.check_model(full_check=True)`: the file is a valid ONNX
   model (opset, types, shapes inferred through every node).
2. The input is named `images`, the output `logits`, and the batch
   dimension of both is symbolic (dynamic).
3. ONNX Runtime (CPU) runs it on the test images of a Fashion-MNIST
   directory (the IDX files, e.g. tests/data/fashion-mnist-subset) in
   batches of --batch images, and the logits are compared with normlab's
   (`--expected`: raw little-endian float32, images x classes, in file
   order): every value within --tol of normlab's, scaled by max(1, |value|),
   the same class for every image, and so the same accuracy.

Several models can be checked in one run (one --model and one --expected
each, in the same order). Prints one JSON line per model; exits 1 when a
check fails.
Usage: check_onnx.py --data-dir DIR --model M.onnx --expected LOGITS.f32 [--model ... --expected ...]
"""

import argparse
import gzip
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2049:  # labels
        return np.frombuffer(data, dtype=np.uint8, offset=8, count=count)
    rows, cols = struct.unpack(">II", data[8:16])
    images = np.frombuffer(data, dtype=np.uint8, offset=16, count=count * rows * cols)
    return images.reshape(count, 1, rows, cols)


def check(path, expected, images, labels, tol, batch):
    """The checks of the module docstring on one model; the report as a dict."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    failures = []
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        failures.append(f"opset {opset} < 17")
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if names != (["images"], ["logits"]):
        failures.append(f"inputs/outputs are {names}, expected ['images'], ['logits']")
    for value in list(graph.input) + list(graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if not first.dim_param:
            failures.append(f"{value.name}: batch dimension is fixed ({first.dim_value}), expected dynamic")

    # as normlab scales bytes: byte * (1/255) in float32
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["logits"], {"images": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    want = np.fromfile(expected, dtype="<f4")
    worst, acc_ort, acc_normlab = float("inf"), float("nan"), float("nan")
    if want.size != got.size:
        failures.append(f"normlab gave {want.size} values, ONNX Runtime {got.size} ({got.shape})")
    else:
        want = want.reshape(got.shape)
        diff = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want.astype(np.float64)))
        worst = float(diff.max())
        if not worst <= tol:
            failures.append(f"largest difference {worst:.3e} > {tol:g}")
        changed = int((got.argmax(1) != want.argmax(1)).sum())
        if changed:
            failures.append(f"{changed} images get another class in ONNX Runtime than in normlab")
        acc_ort = float((got.argmax(1) == labels).mean())
        acc_normlab = float((want.argmax(1) == labels).mean())
        if acc_ort != acc_normlab:
            failures.append(f"accuracy {acc_ort} in ONNX Runtime, {acc_normlab} in normlab")
    return {
        "model": path,
        "images": int(len(x)),
        "opset": opset,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "max_rel_diff": worst,
        "accuracy_onnxruntime": acc_ort,
        "accuracy_normlab": acc_normlab,
        "ok": not failures,
        "failures": failures,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, action="append")
    p.add_argument("--expected", required=True, action="append", help="normlab's logits, raw float32")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    if len(args.model) != len(args.expected):
        p.error(f"{len(args.model)} --model but {len(args.expected)} --expected: give one of each per model")
    images = read_idx(f"{args.data_dir}/t10k-images-idx3-ubyte.gz")
    labels = read_idx(f"{args.data_dir}/t10k-labels-idx1-ubyte.gz")
    ok = True
    for model, expected in zip(args.model, args.expected):
        report = check(model, expected, images, labels, args.tol, args.batch)
        print(json.dumps(report), flush=True)
        ok = ok and report["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
