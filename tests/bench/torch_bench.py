#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""torch_bench.py: the PyTorch half of tapegrad's training benchmarks.

The workloads, hyper-parameters, data and timing method are those of
tests/bench/bench_train.c (docs/performance.md describes them); script/bench runs
both and prints one table of ratios.

  torch_bench.py [--quick] [--only overhead,xor,mlp64,mlp1024] [--json PATH]
  torch_bench.py --fashion [--quick] [--epochs N] [--threads N] [--data DIR]
                 [--independent] [--json PATH]
  torch_bench.py --combine DIR      the final table from the files script/bench
                                    leaves in DIR (needs no torch)

Run it with Debian's /usr/bin/python3 (python3-torch imports there). Results are
JSON lines ({"side": "pytorch", "key": ..., "value": ...}) on stdout, or in PATH
with --json (then a readable log goes to stdout).

Thread counts are set with torch.set_num_threads and, since Debian's PyTorch does
its GEMMs in OpenBLAS (whose pthreads ignore torch's setting), with
openblas_set_num_threads too.
"""
import argparse
import gzip
import json
import math
import os
import re
import resource
import statistics
import sys
import time

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

OUT = None      # the JSON-lines stream
LOG = sys.stdout


def log(*a):
    if OUT is not sys.stdout:
        print(*a, file=LOG, flush=True)


def emit(key, value, unit="", **extra):
    rec = {"side": "pytorch", "key": key, "value": value, "unit": unit}
    rec.update(extra)
    print(json.dumps(rec), file=OUT, flush=True)


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return -1.0


# ---- the same synthetic numbers as bench_train.c (splitmix64 streams) --------

def stream_uniform(seed, n):
    """Values i = 1..n of splitmix64 stream `seed`, as doubles in [0, 1)."""
    import numpy as np
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def shared_init_(linear, seed):
    """He-uniform weights identical to bench_train.c's shared_init (which fills
    tapegrad's [in,out] layout; torch stores [out,in]); bias 0."""
    import numpy as np
    import torch
    out_f, in_f = linear.weight.shape
    a = math.sqrt(6.0 / in_f)
    w = ((2.0 * stream_uniform(seed, in_f * out_f) - 1.0) * a).astype(np.float32)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.reshape(in_f, out_f).T.copy()))
        linear.bias.zero_()


def pool_make(n, features, seed):
    import numpy as np
    import torch
    x = stream_uniform(seed, n * features).astype(np.float32).reshape(n, features)
    y = (stream_uniform(seed + 1, n) * 10.0).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


# ---- threads --------------------------------------------------------------

_openblas = None


def set_threads(n):
    global _openblas
    import torch
    torch.set_num_threads(n)
    if _openblas is None:
        import ctypes
        try:
            _openblas = ctypes.CDLL("libopenblas.so.0")
            _openblas.openblas_set_num_threads
        except (OSError, AttributeError):
            _openblas = False
    if _openblas:
        _openblas.openblas_set_num_threads(n)


# ---- timing ---------------------------------------------------------------

def measure(run, steps=0, target_s=0.5, reps=5, min_steps=3, max_steps=100000, warm_s=0.3):
    """Warm up (at least warm_s and 3 steps), then `reps` repeats of `steps` steps
    (0: as many as fill target_s). run(n) returns the seconds n steps took.
    Returns seconds per step: median, min, max, and the counts."""
    spent, n, warm, last, last_n = 0.0, 1, 0, 0.0, 1
    while spent < warm_s or warm < 3:
        last = run(n)
        last_n = n
        spent += last
        warm += n
        n = min(n * 2, 1 << 20)
    if steps <= 0:
        per = last / last_n
        steps = max(min_steps, min(max_steps, math.ceil(target_s / per) if per > 0 else max_steps))
    v, cpu = [], []
    for _ in range(reps):
        c = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
        v.append(run(steps) / steps)
        cpu.append((time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - c) / steps)
    v.sort()
    return {"med": statistics.median(v), "min": v[0], "max": v[-1], "reps": reps, "steps": steps,
            "cpu": statistics.median(cpu)}


def emit_timing(key, t, scale, unit):
    emit(key, t["med"] * scale, unit, min=t["min"] * scale, max=t["max"] * scale,
         cpu=t["cpu"] * scale, reps=t["reps"], steps=t["steps"])


def fmt_us(us):
    return f"{us:.3f} us" if us < 100 else (f"{us:.1f} us" if us < 1e5 else f"{us / 1e3:.1f} ms")


def row(name, threads, t, batch=0):
    per = fmt_us(t["med"] * 1e6)
    cpu = fmt_us(t["cpu"] * 1e6) if threads == 1 else "-"
    sps = f"{batch / t['med']:.0f}" if batch else "-"
    log(f"{name:<44} {threads:>7} {per:>12} {cpu:>12} {sps:>12} "
        f"{t['min'] * 1e6:>10.3g}..{t['max'] * 1e6:.3g} us   ({t['reps']} x {t['steps']} steps)")


# ---- workloads --------------------------------------------------------------

def bench_overhead(quick):
    import torch
    set_threads(1)
    a = torch.full((4,), 0.5, requires_grad=True)
    b = torch.full((4,), 0.25, requires_grad=True)
    K, reps, warm = 1000, (11 if quick else 31), 3
    rec, bwd, nog = [], [], []
    for r in range(warm + reps):
        t0 = now()
        t = a
        for _ in range(K):
            t = t + b
        t1 = now()
        loss = t.sum()
        t2 = now()
        loss.backward()
        t3 = now()
        with torch.no_grad():
            t4 = now()
            t = a
            for _ in range(K):
                t = t + b
            t5 = now()
        a.grad = None
        b.grad = None
        if r >= warm:
            rec.append((t1 - t0) / K * 1e9)
            bwd.append((t3 - t2) / (K + 1) * 1e9)
            nog.append((t5 - t4) / K * 1e9)
    m_rec, m_bwd, m_nog = (statistics.median(v) for v in (rec, bwd, nog))
    log(f"engine overhead (1 thread, f32, median of {reps} chains of {K} ops):")
    log(f"  a + b on [4], recorded by autograd        {m_rec:9.1f} ns/op")
    log(f"  backward of that chain, per node          {m_bwd:9.1f} ns/node")
    log(f"  a + b on [4] under torch.no_grad()        {m_nog:9.1f} ns/op\n")
    emit("overhead.add_record_ns", m_rec, "ns")
    emit("overhead.backward_ns_per_node", m_bwd, "ns")
    emit("overhead.add_nograd_ns", m_nog, "ns")


def bench_xor(quick):
    import torch
    import torch.nn.functional as F
    from torch import nn
    set_threads(1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float32)
    Y = torch.tensor([[0], [1], [1], [0]], dtype=torch.float32)

    def run(n):
        t0 = now()
        for _ in range(n):
            opt.zero_grad()
            loss = F.mse_loss(model(X), Y)
            loss.backward()
            opt.step()
        return now() - t0

    with torch.no_grad():
        loss0 = F.mse_loss(model(X), Y).item()
    t = measure(run, steps=2000 if quick else 10000, reps=3, warm_s=0.2)
    with torch.no_grad():
        loss1 = F.mse_loss(model(X), Y).item()
    row("XOR 2-4-1, batch 4, MSE, SGD (full step)", 1, t)
    log(f"  loss {loss0:.4f} before, {loss1:.4f} after the timed steps")
    emit_timing("xor.us_per_step", t, 1e6, "us")
    emit("xor.loss_first", loss0)
    emit("xor.loss_last", loss1)


def bench_mlp(key, name, widths, batch, opt_name, lr, quick, data):
    import torch
    import torch.nn.functional as F
    from torch import nn
    X, Y = data
    res = {}
    for threads in (1, 2):
        set_threads(threads)
        torch.manual_seed(1)
        layers = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        if opt_name == "rmsprop":
            opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr)
        state = {"pos": 0, "loss": float("nan")}

        def run(n):
            pos = state["pos"]
            t0 = now()
            for i in range(n):
                xb, yb = X[pos:pos + batch], Y[pos:pos + batch]
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                pos += batch
                if pos + batch > X.shape[0]:
                    pos = 0
            t = now() - t0
            state["pos"] = pos
            state["loss"] = loss.item()
            return t

        t = measure(run, target_s=0.15 if quick else 0.4, reps=3 if quick else 5,
                    warm_s=0.1 if quick else 0.3)
        row(name, threads, t, batch)
        emit_timing(f"{key}.t{threads}.us_per_step", t, 1e6, "us")
        emit(f"{key}.t{threads}.samples_per_s", batch / t["med"], "samples/s")
        emit(f"{key}.t{threads}.loss_last", state["loss"])
        res[threads] = t["med"]
    log(f"  2 threads vs 1: {res[1] / res[2]:.2f}x")


def read_idx(path, offset):
    import numpy as np
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def find_idx(d, split, kind):
    for name in (f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte",):
        for suffix in ("", ".gz"):
            p = os.path.join(d, name + suffix)
            if os.path.exists(p):
                return p
    raise SystemExit(f"torch_bench.py: no {split} {kind} in {d}")


def run_fashion(d, epochs, threads, shared):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    t_start = now()
    set_threads(threads)
    xs, ys = {}, {}
    for split, name in (("train", "train"), ("test", "t10k")):
        x = read_idx(find_idx(d, name, "images"), 16).reshape(-1, 784).astype(np.float32)
        x /= 255.0
        xs[split] = torch.from_numpy(x)
        ys[split] = torch.from_numpy(read_idx(find_idx(d, name, "labels"), 8).astype(np.int64))
    t_loaded = now()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    if shared:
        shared_init_(model[0], 1001)
        shared_init_(model[2], 1002)
    else:  # tapegrad's tg_mlp_init scheme: He uniform (ReLU gain), zero bias
        for m in (model[0], model[2]):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    Xtr, Ytr, Xte, Yte = xs["train"], ys["train"], xs["test"], ys["test"]
    n = Xtr.shape[0]
    # shared: every epoch's order computed up front, as bench_train.c does
    orders = [torch.from_numpy(np.argsort(stream_uniform(2001 + e, n), kind="stable"))
              for e in range(epochs)] if shared else None
    log(f"Fashion-MNIST, MLP 784-128-10 ReLU, Adam lr 1e-3, batch 64, shuffled, seed 1, "
        f"{threads} thread{'s' if threads > 1 else ''}, "
        + ("initial weights and sample order shared with tapegrad" if shared
           else "He-uniform weights, torch.randperm shuffle"))
    log(f"  loaded {n} train + {Xte.shape[0]} test samples in {t_loaded - t_start:.2f} s")
    log(f"  {'epoch':>5} {'train s':>10} {'loss':>10} {'test acc':>10} {'eval s':>10}")
    emit("fashion.load_s", t_loaded - t_start, "s")
    emit("fashion.threads", threads)
    ep, ep_cpu, acc = [], [], 0.0
    for e in range(epochs):
        c0 = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
        t0 = now()
        perm = orders[e] if shared else torch.randperm(n, generator=gen)
        lsum = 0.0
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            xb, yb = Xtr[idx], Ytr[idx]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            lsum += loss.item() * len(idx)
        t1 = now()
        ep_cpu.append(time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - c0)
        correct = 0
        with torch.no_grad():
            for i in range(0, Xte.shape[0], 1000):
                correct += (model(Xte[i:i + 1000]).argmax(1) == Yte[i:i + 1000]).sum().item()
        t2 = now()
        acc = correct / Xte.shape[0]
        ep.append(t1 - t0)
        log(f"  {e + 1:5d} {t1 - t0:10.3f} {lsum / n:10.4f} {100 * acc:9.2f}% {t2 - t1:10.3f}")
        emit(f"fashion.epoch{e + 1}.train_s", t1 - t0, "s")
        emit(f"fashion.epoch{e + 1}.test_acc", 100 * acc, "%")
        emit(f"fashion.epoch{e + 1}.loss", lsum / n)
        emit(f"fashion.epoch{e + 1}.eval_s", t2 - t1, "s")
    med = statistics.median(ep)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    log(f"  median {med:.3f} s/epoch ({n / med:.0f} samples/s; thread CPU time "
        f"{statistics.median(ep_cpu):.3f} s/epoch); final test accuracy "
        f"{100 * acc:.2f}%; peak RSS {rss:.1f} MB")
    ep.sort()
    emit("fashion.s_per_epoch", med, "s", min=ep[0], max=ep[-1], cpu=statistics.median(ep_cpu),
         reps=epochs, steps=n)
    emit("fashion.samples_per_s", n / med, "samples/s")
    emit("fashion.test_acc", 100 * acc, "%")
    emit("fashion.epochs", epochs)
    emit("fashion.self_peak_rss_mb", rss, "MB")


# ---- the combined table ---------------------------------------------------------
#
# script/bench leaves in DIR: tg_<workload>[_r<round>].jsonl and
# torch_<workload>[_r<round>].jsonl (JSON lines of bench_train and of this script),
# tg_fashion.time and torch_fashion.time (/usr/bin/time -v). A workload measured in
# several rounds (tapegrad, PyTorch, tapegrad, PyTorch, ...) gives each side's median
# over the rounds, and as ratio the median of the per-round ratios (each round's two
# sides ran within a minute of each other), with their range.

FILE_RE = re.compile(r"^(tg|torch)_(.+?)(?:_r(\d+))?\.jsonl$")


def load_results(d):
    """{side: {key: {round: record}}}, and every load average seen."""
    R, loads = {}, []
    for name in sorted(os.listdir(d)):
        m = FILE_RE.match(name)
        if not m:
            continue
        rnd = int(m.group(3) or 0)
        with open(os.path.join(d, name)) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                R.setdefault(r["side"], {}).setdefault(r["key"], {})[rnd] = r
                if r["key"].startswith("meta.loadavg") and isinstance(r["value"], (int, float)):
                    loads.append(r["value"])
    return R, loads


# The examples (cnn_classifier, char_rnn, char_gpt) and their PyTorch twins end with
# one JSON object; script/bench turns it into records of this file's format.
EXAMPLE_KEYS = {  # workload: (time key, its field, CPU field, unit, arena-growth field)
    "cnn": ("s_per_epoch", "seconds_per_epoch", "cpu_seconds_per_epoch", "s",
            "warm_step_arena_grows"),
    "rnn": ("ms_per_step", "ms_per_step", "cpu_ms_per_step", "ms", "arena_grows_warm"),
    "gpt": ("ms_per_step", "ms_per_step", "cpu_ms_per_step", "ms", "warm_arena_grows"),
}


def convert_example(side, workload, path):
    key, field, cpu, unit, grows = EXAMPLE_KEYS[workload]
    try:
        with open(path) as f:
            r = json.loads(f.read().strip() or "{}")
    except (OSError, ValueError):
        r = {}
    if field not in r:
        return
    print(json.dumps({"side": side, "key": f"{workload}.{key}", "value": r[field],
                      "cpu": r.get(cpu), "unit": unit,
                      "samples": r.get("train_samples"), "steps": r.get("steps")}))
    if grows in r:
        print(json.dumps({"side": side, "key": f"{workload}.warm_arena_grows",
                          "value": r[grows], "unit": "grows"}))


def read_records(path):
    """{key: record} of a JSON-lines file outside the rounds (peak, busy, callgrind)."""
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    out[r["key"]] = r
    return out


GEMM_ROW = re.compile(r"^(.{14}) (f32|f64) (NN|TN|NT)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                      r"([\d.]+)(?:\s+([\d.]+)\s+([\d.]+))?")


def read_gemm(path):
    """bench_gemm's rows: (label, dtype, form, m, k, n, threads, ours, openblas, ratio)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                m = GEMM_ROW.match(line)
                if m:
                    g = m.groups()
                    rows.append((g[0].strip(), g[1], g[2], int(g[3]), int(g[4]), int(g[5]),
                                 int(g[6]), float(g[7]), float(g[8]) if g[8] else None,
                                 float(g[9]) if g[9] else None))
    return rows


def read_time_v(path):
    """Max RSS (MB) and elapsed seconds from /usr/bin/time -v output."""
    if not os.path.exists(path):
        return None, None
    rss = el = None
    with open(path) as f:
        for line in f:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", line)
            if m:
                rss = int(m.group(1)) / 1024.0
            m = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", line)
            if m:
                el = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return rss, el


def read_time_rounds(d, stem):
    """read_time_v over stem.time or stem_r<k>.time: the largest peak RSS and the
    median elapsed time of the rounds."""
    names = sorted(n for n in os.listdir(d)
                   if n == stem + ".time" or re.match(re.escape(stem) + r"_r\d+\.time$", n))
    got = [read_time_v(os.path.join(d, n)) for n in names]
    rss = [r for r, _ in got if r is not None]
    el = [e for _, e in got if e is not None]
    return (max(rss) if rss else None), (statistics.median(el) if el else None)


def example_rows(tg, pt, v, paired, fmt_ratio, met, cpu_note):
    """The examples against their PyTorch twins: time ratios and warm-step growths."""
    rows = []
    for w, name, target in (
            ("cnn", "CNN Fashion-MNIST (conv 16/32 5x5, Adam b64), train s per {n} images, 1 thr", 2),
            ("rnn", "char_rnn step (LSTM 2x256, T 64, b32, Adam), 1 thread", 1.5),
            ("gpt", "char_gpt step (4 blocks, width 128, T 64, b32, AdamW), 1 thread", 1.5)):
        key = w + (".s_per_epoch" if w == "cnn" else ".ms_per_step")
        a, b = v(tg, key), v(pt, key)
        if a is None and b is None:
            continue
        unit = " s" if w == "cnn" else " ms"
        n = v(tg, key, "samples") or v(pt, key, "samples")
        r = paired(key, key)
        rows.append([name.format(n=f"{n:g}" if n else "?"),
                     f"{a:.2f}{unit}" if a else "n/a", f"{b:.2f}{unit}" if b else "n/a",
                     (fmt_ratio(r) + cpu_note(key)) if r else "n/a", f">= {target:g}x",
                     met(r is not None and r[0] >= target, r)])
    grows = [(w, v(tg, w + ".warm_arena_grows")) for w in ("cnn", "rnn", "gpt")]
    grows = [(w, g) for w, g in grows if g is not None]
    if grows:
        rows.append(["Arena growths in warm steps: " + " / ".join(w for w, _ in grows),
                     " / ".join(f"{g:g}" for _, g in grows), "n/a", "", "0",
                     met(all(g == 0 for _, g in grows), 1)])
    return rows


MLP_FLOP_PER_SAMPLE = {  # GEMM work of a step per sample: forward, weight gradients,
    "mlp1024": 2 * (784 * 1024 + 1024 * 1024 + 1024 * 10) * 2 + 2 * (1024 * 1024 + 1024 * 10),
    "mlp64": 2 * (784 * 64 + 64 * 10) * 2 + 2 * (64 * 10),  # and input gradients but the first
}


def issue13_rows(d, tg, pt, v, paired, fmt_ratio, met):
    """Issue 13's targets: each a ratio within this run."""
    rows = []
    peak = read_records(os.path.join(d, "peak.jsonl"))
    gemm = read_gemm(os.path.join(d, "gemm.txt"))
    gemm_x = read_gemm(os.path.join(d, "gemm_skylakex.txt"))
    pk = {dt: peak.get(f"peak.{dt}_gflops", {}).get("value") for dt in ("f32", "f64")}
    bits = peak.get("peak.vector_bits", {}).get("value")
    if pk["f32"]:
        rows.append([f"FMA peak, 1 thread, {bits or '?'}-bit registers only (bench_peak) f32 / f64",
                     f"{pk['f32']:.1f} / {pk['f64']:.1f} GFLOP/s", "", "", "(reference)", ""])

    def at1024(rowset, dt, side):  # the best and the worst of the three forms (NN, TN, NT)
        got = [(r[7] if side == "tg" else r[8]) for r in rowset
               if r[0] == "square" and r[1] == dt and r[3] == 1024 and r[6] == 1]
        got = [g for g in got if g]
        return (max(got), min(got)) if got else (None, None)

    best_gemm = {}
    for dt in ("f32", "f64"):
        ours, ours_min = at1024(gemm + gemm_x, dt, "tg")
        blas = max([x for x in (at1024(gemm, dt, "blas")[0], at1024(gemm_x, dt, "blas")[0]) if x]
                   or [0]) or None
        best_gemm[dt] = max(ours or 0, blas or 0) or None
        if ours and pk[dt]:
            frac = ours / pk[dt]
            rows.append([f"GEMM n = 1024 {dt}, 1 thread, as a fraction of the FMA peak",
                         f"{ours:.1f} GFLOP/s, best form (worst {ours_min:.1f})",
                         f"OpenBLAS {blas:.1f}, best form" if blas else "n/a",
                         f"{frac:.2f} of peak (worst form {ours_min / pk[dt]:.2f})", ">= 0.85",
                         met(frac >= 0.85, frac)])
    # bench_gemm times one thread in thread CPU time; so are the steps here (wall time in
    # parentheses: on a busy machine it also counts waiting for the core)
    for w, batch, name, target in (("mlp1024", 256, "Big MLP step efficiency", 0.92),
                                   ("mlp64", 64, "Small MLP step efficiency", 0.80)):
        ref = best_gemm.get("f32")
        f = MLP_FLOP_PER_SAMPLE[w]
        uk = w + ".t1.us_per_step"

        def gflops(side, field):
            us = v(side, uk, field)
            return batch / (us * 1e-6) * f * 1e-9 if us else None
        cpu_tg, cpu_pt = gflops(tg, "cpu"), gflops(pt, "cpu")
        wall_tg, wall_pt = gflops(tg, "value"), gflops(pt, "value")
        if not (cpu_tg and ref):
            continue
        fmt = lambda c, wl: (f"{c:.1f} GFLOP/s CPU ({wl:.1f} wall)" if c and wl else "n/a")
        rows.append([f"{name} ({f / 1e6:.3g} MFLOP/sample; / best GEMM n=1024)",
                     fmt(cpu_tg, wall_tg), fmt(cpu_pt, wall_pt),
                     f"{cpu_tg / ref:.2f} ({wall_tg / ref:.2f} wall; PyTorch "
                     f"{(cpu_pt or 0) / ref:.2f})", f">= {target:.2f}",
                     met(cpu_tg / ref >= target, 1)])
    busy = read_records(os.path.join(d, "busy_mlp1024.jsonl"))
    b1 = busy.get("mlp1024.t1.samples_per_s", {}).get("value")
    b2 = busy.get("mlp1024.t2.samples_per_s", {}).get("value")
    if b1 and b2:
        rows.append(["Big MLP 2 threads vs 1 with a busy loop on a core (started by the bench)",
                     f"{b2 / b1:.2f}x ({b2:,.0f} vs {b1:,.0f}/s)", "", f"{b2 / b1:.2f}x",
                     ">= 0.95x", met(b2 / b1 >= 0.95, 1)])
    cg = read_records(os.path.join(d, "callgrind.jsonl")).get("xor.instructions_per_step")
    if cg:
        rows.append(["XOR 2-4-1 step, instructions per step (callgrind)", f"{cg['value']:,.0f}",
                     "KANN: 7,200 (issue 13)", f"{7200 / cg['value']:.2f}x fewer than KANN",
                     "<= 3,500", met(cg["value"] <= 3500, 1)])
    sel = [r for r in gemm_x if r[6] == 1 and r[9] is not None and
           ((r[0] == "square" and r[3] >= 256) or r[0].startswith("mlp"))]
    if sel:  # the thin products (a dimension of 10) may stay at 0.8x (issue 13)
        thin = [r for r in sel if min(r[3], r[4], r[5]) <= 10]
        wide = [r for r in sel if r not in thin]
        ok = [r for r in wide if r[9] >= 0.95]
        ok_thin = [r for r in thin if r[9] >= 0.8]
        worst = min(wide or sel, key=lambda r: r[9])
        rows.append(["GEMM vs OpenBLAS AVX-512 (SkylakeX), square n >= 256 and MLP shapes, 1 thr",
                     f"{len(ok)} of {len(wide)} rows >= 0.95x; thin (a dim of 10): "
                     f"{len(ok_thin)} of {len(thin)} >= 0.8x",
                     "", f"worst {worst[9]:.2f}x ({worst[0]} {worst[1]} {worst[2]} "
                     f"{worst[3]}x{worst[4]}x{worst[5]})", ">= 0.95x (thin: 0.8x)",
                     met(len(ok) == len(wide) and len(ok_thin) == len(thin), 1)])
    return rows


def combine(d, md_out=None):
    R, loads = load_results(d)
    tg, pt = R.get("tapegrad", {}), R.get("pytorch", {})
    ncpu = os.cpu_count() or 1
    n_rounds = max([len(x) for x in tg.values()] + [1])

    def v(side, key, field="value"):
        """Median over rounds of a field (None if absent)."""
        vals = [r.get(field) for r in side.get(key, {}).values()]
        vals = [x for x in vals if isinstance(x, (int, float))]
        return statistics.median(vals) if vals else None

    def paired(ka, kb, field="value", tg_over_pt=False, side_b=None):
        """Per-round ratios pt/tg (or tg/pt) of key ka (tapegrad) and kb (PyTorch, or
        side_b): their median, min, max; None when no round has both."""
        a, b = tg.get(ka, {}), (side_b if side_b is not None else pt).get(kb, {})
        rs = []
        for rnd in sorted(set(a) & set(b)):
            x, y = a[rnd].get(field), b[rnd].get(field)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0 and y > 0:
                rs.append(x / y if tg_over_pt else y / x)
        if not rs:
            return None
        return statistics.median(rs), min(rs), max(rs)

    def fmt_ratio(r, digits=2, suffix="x"):
        if r is None:
            return "n/a"
        med, lo, hi = r
        d = 0 if med >= 100 else digits
        text = f"{med:.{d}f}{suffix}"
        if hi > lo * 1.0001:
            text += f" [{lo:.{d}f}-{hi:.{d}f}]"
        return text

    def met(ok, have):
        if have is None:
            return "n/a"
        return "yes" if ok else "**no**"

    def fmt_us(x):
        if x is None:
            return "n/a"
        return f"{x:.3f} us" if x < 10 else (f"{x:.1f} us" if x < 1e4 else f"{x / 1e3:.1f} ms")

    rows = []

    def cpu_note(ka, kb=None, tg_over_pt=False):
        r = paired(ka, kb or ka, "cpu", tg_over_pt)
        return f" (CPU time: {fmt_ratio(r)})" if r else ""

    # XOR: time per step, ratio PyTorch / tapegrad
    r = paired("xor.us_per_step", "xor.us_per_step")
    rows.append(["XOR 2-4-1 train step, batch 4, 1 thread", fmt_us(v(tg, "xor.us_per_step")),
                 fmt_us(v(pt, "xor.us_per_step")),
                 (fmt_ratio(r) + cpu_note("xor.us_per_step")) if r else "n/a", ">= 200x",
                 met(r is not None and r[0] >= 200, r)])

    def rate_row(name, key, target, threads):
        sk, uk = key + ".samples_per_s", key + ".us_per_step"
        a, b = v(tg, sk), v(pt, sk)
        r = paired(sk, sk, tg_over_pt=True)
        fa = f"{a:,.0f}/s ({fmt_us(v(tg, uk))})" if a else "n/a"
        fb = f"{b:,.0f}/s ({fmt_us(v(pt, uk))})" if b else "n/a"
        note = cpu_note(uk) if threads == 1 else ""
        rows.append([name, fa, fb, (fmt_ratio(r) + note) if r else "n/a", f">= {target:g}x",
                     met(r is not None and r[0] >= target, r)])

    rate_row("MLP 784-64-10, b64, RMSprop, 1 thread", "mlp64.t1", 3, 1)
    rate_row("MLP 784-64-10, b64, RMSprop, 2 threads", "mlp64.t2", 3, 2)
    rate_row("MLP 784-1024-1024-10, b256, SGD, 1 thread", "mlp1024.t1", 2, 1)
    rate_row("MLP 784-1024-1024-10, b256, SGD, 2 threads", "mlp1024.t2", 2, 2)
    # own scaling: t2 / t1 samples/s on each side, per round
    sa = paired("mlp1024.t2.samples_per_s", "mlp1024.t1.samples_per_s", tg_over_pt=True, side_b=tg)
    rt = {}
    for rnd in set(pt.get("mlp1024.t1.samples_per_s", {})) & set(pt.get("mlp1024.t2.samples_per_s", {})):
        rt[rnd] = pt["mlp1024.t2.samples_per_s"][rnd]["value"] / pt["mlp1024.t1.samples_per_s"][rnd]["value"]
    sb = (statistics.median(rt.values()), min(rt.values()), max(rt.values())) if rt else None
    rows.append(["MLP 784-1024-1024-10: 2 threads vs 1 (own scaling)", fmt_ratio(sa),
                 fmt_ratio(sb), fmt_ratio(sa), ">= 1.9x (tapegrad)",
                 met(sa is not None and sa[0] >= 1.9, sa)])

    fa, fb = v(tg, "fashion.s_per_epoch"), v(pt, "fashion.s_per_epoch")
    if fa or fb:
        ep = v(tg, "fashion.epochs") or v(pt, "fashion.epochs")
        th = v(tg, "fashion.threads") or v(pt, "fashion.threads")
        r = paired("fashion.s_per_epoch", "fashion.s_per_epoch")
        note = cpu_note("fashion.s_per_epoch") if th == 1 else ""
        rows.append([f"Fashion-MNIST 784-128-10 Adam b64, train s/epoch ({th:g} thr, median of {ep:g})",
                     f"{fa:.2f} s" if fa else "n/a", f"{fb:.2f} s" if fb else "n/a",
                     (fmt_ratio(r) + note) if r else "n/a", ">= 3x",
                     met(r is not None and r[0] >= 3, r)])
        aa, ab = v(tg, "fashion.test_acc"), v(pt, "fashion.test_acc")
        diff = aa - ab if aa is not None and ab is not None else None
        rows.append([f"Fashion-MNIST test accuracy after {ep:g} epoch{'s' if ep != 1 else ''}",
                     f"{aa:.2f} %" if aa is not None else "n/a",
                     f"{ab:.2f} %" if ab is not None else "n/a",
                     f"{diff:+.2f} points" if diff is not None else "n/a", "within 0.5 points",
                     met(diff is not None and abs(diff) <= 0.5, diff)])
        ra, ea = read_time_rounds(d, "tg_fashion")
        rb, eb = read_time_rounds(d, "torch_fashion")
        src = "/usr/bin/time -v"
        if ra is None or rb is None:
            ra, rb = v(tg, "fashion.self_peak_rss_mb"), v(pt, "fashion.self_peak_rss_mb")
            src = "getrusage"
        ratio = rb / ra if ra and rb else None
        rows.append([f"Fashion-MNIST peak RSS ({src}, whole process)",
                     f"{ra:.0f} MB" if ra else "n/a", f"{rb:.0f} MB" if rb else "n/a",
                     f"{ratio:.2f}x less" if ratio else "n/a", "below PyTorch",
                     met(ratio is not None and ratio > 1, ratio)])
        if ea and eb:
            rows.append(["Fashion-MNIST whole process wall time (load+train+eval)",
                         f"{ea:.1f} s", f"{eb:.1f} s", f"{eb / ea:.2f}x", "(info)", ""])

    # heap allocations during warm, timed steps (all rounds)
    keys = [k for k in tg if k.endswith("ctx_allocs") or k.endswith("heap_allocs")
            or k.endswith("allocs_after_epoch1")]
    if keys:
        ctx_total = sum(r["value"] for k in keys if "ctx_allocs" in k for r in tg[k].values())
        heap_total = sum(r["value"] for k in keys if "heap_allocs" in k for r in tg[k].values())
        rows.append(["Heap allocations in all warm timed steps (ctx allocator / process malloc)",
                     f"{ctx_total:g} / {heap_total:g}", "n/a", "", "0",
                     met(ctx_total == 0 and heap_total == 0, ctx_total)])
    for key, name in (("overhead.add_record_ns", "Engine: tiny op recorded (add [4]+[4])"),
                      ("overhead.backward_ns_per_node", "Engine: backward per node (add chain)"),
                      ("overhead.add_nograd_ns", "Engine: tiny op, no grad")):
        a, b = v(tg, key), v(pt, key)
        if a or b:
            rows.append([name, f"{a:.0f} ns" if a else "n/a", f"{b:.0f} ns" if b else "n/a",
                         fmt_ratio(paired(key, key), 0), "(info)", ""])

    rows += example_rows(tg, pt, v, paired, fmt_ratio, met, cpu_note)
    rows += issue13_rows(d, tg, pt, v, paired, fmt_ratio, met)

    head = ["workload", "tapegrad", "PyTorch", "ratio", "target", "met?"]
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(str(h).ljust(w[i]) for i, h in enumerate(head)) + " |",
             "|" + "|".join("-" * (w[i] + 2) for i in range(len(head))) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |")
    mode = next((r["value"] for r in tg.get("meta.mode", {}).values()), "?")
    notes = [
        "",
        f"Mode: {mode}, {n_rounds} round{'s' if n_rounds > 1 else ''} per workload. "
        "Ratio: PyTorch time / tapegrad time, or tapegrad",
        "samples/s / PyTorch's (above 1: tapegrad is faster); with several rounds, the median of",
        "the per-round ratios [and their range]; the two sides of a round ran one right after the",
        "other. \"CPU time\" is the same ratio in thread CPU time (one-thread rows), which does not",
        "count waiting for a core. The machine is shared and noisy"
        + (f" (load average {min(loads):.1f} to {max(loads):.1f} on {ncpu} cores)" if loads else "")
        + ": trust ratios more than absolute figures.",
    ]
    if loads and max(loads) >= ncpu:
        notes.append(f"The load reached the core count ({ncpu}): two-thread figures then measure "
                     "the scheduler more than the code; judge them on an idle machine.")
    text = "\n".join(lines + notes)
    print(text)
    if md_out:
        with open(md_out, "w") as f:
            f.write(text + "\n")


# ---- main ---------------------------------------------------------------------

def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="overhead,xor,mlp64,mlp1024")
    ap.add_argument("--json")
    ap.add_argument("--fashion", action="store_true")
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=FASHION_DIR)
    ap.add_argument("--independent", action="store_true",
                    help="--fashion: own init and shuffle instead of tapegrad's shared ones")
    ap.add_argument("--combine", metavar="DIR")
    ap.add_argument("--md", metavar="PATH", help="with --combine: also write the table here")
    ap.add_argument("--convert", nargs=3, metavar=("SIDE", "WORKLOAD", "FILE"),
                    help="turn an example's JSON line (cnn, rnn, gpt) into table records")
    a = ap.parse_args()
    if a.combine:
        combine(a.combine, a.md)
        return
    if a.convert:
        convert_example(*a.convert)
        return
    OUT = open(a.json, "w") if a.json else sys.stdout
    import torch
    if a.fashion:
        run_fashion(a.data, a.epochs or (1 if a.quick else 5), a.threads, not a.independent)
        return
    only = set(a.only.split(","))
    log(f"PyTorch {torch.__version__} training benchmarks{' (quick)' if a.quick else ''}: "
        f"CLOCK_MONOTONIC, warm-up, then the median of repeats.")
    log(f"load average {loadavg():.2f} at start: the machine is shared; compare ratios.\n")
    emit("meta.torch_version", torch.__version__)
    emit("meta.loadavg_start", loadavg())
    if "overhead" in only:
        bench_overhead(a.quick)
    if only & {"xor", "mlp64", "mlp1024"}:
        log(f"{'workload':<44} {'threads':>7} {'per step':>12} {'CPU/step':>12} {'samples/s':>12} "
            f"{'spread (min..max)':>22}")
    if "xor" in only:
        bench_xor(a.quick)
    if "mlp64" in only or "mlp1024" in only:
        data = pool_make(4096, 784, 42)
        if "mlp64" in only:
            bench_mlp("mlp64", "MLP 784-64-10 ReLU, b64, CE, RMSprop", [784, 64, 10], 64,
                      "rmsprop", 1e-3, a.quick, data)
        if "mlp1024" in only:
            bench_mlp("mlp1024", "MLP 784-1024-1024-10 ReLU, b256, CE, SGD", [784, 1024, 1024, 10],
                      256, "sgd", 0.01, a.quick, data)
    log(f"\nload average {loadavg():.2f} at the end.")
    emit("meta.loadavg_end", loadavg())


if __name__ == "__main__":
    main()
