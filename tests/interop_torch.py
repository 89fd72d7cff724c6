#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A tg-mlp checkpoint is a PyTorch state_dict, both ways (docs/interop.md).

Usage: interop_torch.py TG_MLP WORK_DIR

1. tg-mlp trains small networks on a generated 3-class CSV (tanh with a square
   hidden layer, where a transposed weight would still load; relu; leaky_relu;
   sigmoid). Each checkpoint is read with json + struct only, loaded into the
   equivalent nn.Sequential with load_state_dict(strict=True), and the softmax
   probabilities of both on the same rows must agree to float precision.
2. The other way: an nn.Sequential with PyTorch's own initialisation is saved in
   the safetensors layout with tg-mlp's metadata, and `tg-mlp predict --proba`
   must give PyTorch's probabilities.
3. The same with the state_dict in float16 (net.half()): tapegrad converts the
   F16 tensors into its F32 parameters.
Runs under Debian's /usr/bin/python3 with python3-torch; without torch it
prints SKIPPED and exits 77 (ctest reports the test as skipped).
"""
import json
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - depends on the machine
    print("SKIPPED: %s (apt-get install python3-torch python3-numpy, or script/bootstrap --torch)" % e)
    sys.exit(77)

TOL = 2e-6  # probabilities in [0, 1]; float32 sums in a different order
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
        "leaky_relu": lambda: nn.LeakyReLU(0.01)}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(blob[8:8 + n])
    meta = head.pop("__metadata__", {})
    data = blob[8 + n:]
    kinds = {"F32": "<f4", "F64": "<f8"}
    tensors = {}
    for name, t in head.items():
        b, e = t["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=kinds[t["dtype"]]).reshape(t["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return meta, tensors


def write_safetensors(path, tensors, meta):
    kinds = {torch.float32: ("F32", "<f4"), torch.float16: ("F16", "<f2"), torch.int64: ("I64", "<i8")}
    head, chunks, at = {"__metadata__": meta}, [], 0
    for name, t in tensors.items():
        dtype, np_kind = kinds[t.dtype]
        b = t.detach().contiguous().numpy().astype(np_kind).tobytes()
        head[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        chunks.append(b)
        at += len(b)
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def sequential(widths, act):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(ACTS[act]())
    return nn.Sequential(*layers)


def tg_proba(tg_mlp, model, csv):
    out = subprocess.run([tg_mlp, "predict", "--model", model, "--data", csv, "--proba"],
                         check=True, capture_output=True, text=True).stdout
    return np.array([[float(v) for v in line.split(",")] for line in out.split()])


def torch_proba(net, x):
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy().astype(np.float64)


def main():
    tg_mlp, work = os.path.abspath(sys.argv[1]), sys.argv[2]
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    rng = np.random.default_rng(3)
    n, f = 240, 5
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, f)) + y[:, None] * np.array([1.0, -0.5, 0.3, 0.0, 0.8])).astype(np.float32)
    with open("train.csv", "w") as fh:
        fh.write(",".join("f%d" % j for j in range(f)) + ",label\n")
        for row, lab in zip(x, y):
            fh.write(",".join("%.6g" % v for v in row) + ",%d\n" % lab)
    np.savetxt("features.csv", x, fmt="%.6g", delimiter=",",
               header=",".join("f%d" % j for j in range(f)), comments="")
    xf = np.loadtxt("features.csv", delimiter=",", skiprows=1, dtype=np.float32)
    failures = 0

    # 1. tapegrad -> PyTorch
    for act, layers in (("tanh", "8,8"), ("relu", "16"), ("leaky_relu", "6,4"), ("sigmoid", "7")):
        path = "tg_%s.safetensors" % act
        subprocess.run([tg_mlp, "train", "--data", "train.csv", "--layers", layers, "--act", act,
                        "--epochs", "4", "--lr", "1e-2", "--quiet", "--out", path], check=True)
        meta, sd = read_safetensors(path)
        widths = [int(w) for w in meta["tg_mlp.widths"].split(",")]
        net = sequential(widths, meta["tg_mlp.act"])
        net.load_state_dict(sd, strict=True)  # raises on any name or shape difference
        diff = np.abs(torch_proba(net, xf) - tg_proba(tg_mlp, path, "features.csv")).max()
        ok = diff < TOL
        failures += not ok
        print("%s tapegrad -> torch, %s %s: strict load, max |p_torch - p_tapegrad| = %.3g"
              % ("ok  " if ok else "FAIL", act, "-".join(map(str, widths)), diff))

    # 2. PyTorch -> tapegrad
    torch.manual_seed(11)
    for act, widths in (("tanh", [f, 8, 8, 3]), ("relu", [f, 12, 3])):
        net = sequential(widths, act)
        path = "torch_%s.safetensors" % act
        write_safetensors(path, net.state_dict(), {
            "format": "pt", "tg_mlp.version": "2", "tg_mlp.widths": ",".join(map(str, widths)),
            "tg_mlp.act": act, "tg_mlp.input": "csv", "tg_mlp.label": "-1"})
        diff = np.abs(torch_proba(net, xf) - tg_proba(tg_mlp, path, "features.csv")).max()
        ok = diff < TOL
        failures += not ok
        print("%s torch -> tapegrad, %s %s: max |p_torch - p_tapegrad| = %.3g"
              % ("ok  " if ok else "FAIL", act, "-".join(map(str, widths)), diff))

    # 3. a half-precision state_dict (net.half()): F16 tensors load into F32 parameters
    net = sequential([f, 8, 3], "relu").half().float()  # the weights, rounded to F16
    path = "torch_f16.safetensors"
    write_safetensors(path, {k: v.half() for k, v in net.state_dict().items()}, {
        "format": "pt", "tg_mlp.version": "2", "tg_mlp.widths": "%d,8,3" % f,
        "tg_mlp.act": "relu", "tg_mlp.input": "csv", "tg_mlp.label": "-1"})
    diff = np.abs(torch_proba(net, xf) - tg_proba(tg_mlp, path, "features.csv")).max()
    ok = diff < TOL
    failures += not ok
    print("%s torch F16 -> tapegrad F32, relu %d-8-3: max |p_torch - p_tapegrad| = %.3g"
          % ("ok  " if ok else "FAIL", f, diff))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
