#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""torch_cnn.py: examples/cnn_classifier.c's network and training in PyTorch.

The same model (conv 1->16 5x5 pad 2, relu, max pool 2, conv 16->32 5x5 pad 2,
relu, max pool 2, linear 1568->10), the same data (Fashion-MNIST scaled to
[0,1]), Adam lr 1e-3, batches of 64 shuffled each epoch, one thread by default,
so that seconds per epoch can be compared as a ratio measured in the same run:

  /usr/bin/python3 tests/bench/torch_cnn.py [--epochs N] [--limit N] [--threads T]
                                           [--data DIR] [--seed S] [--json]

--limit N trains on the first N training images only (a part of an epoch, to
time it quickly); seconds_per_epoch is the training time of one pass over those
N images (evaluation excluded), as in cnn_classifier; cpu_seconds_per_epoch the
same in CPU time (steadier on a shared machine). With --json the last line
is a JSON object with test_accuracy, train_loss, seconds_per_epoch and
samples_per_second. Debian's PyTorch does its GEMMs in OpenBLAS, whose own
thread count is set too.
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_common import Clock, parse_args

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(d, split, kind):
    name = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for suffix in ("", ".gz"):
        p = os.path.join(d, name + suffix)
        if os.path.exists(p):
            with gzip.open(p, "rb") if p.endswith(".gz") else open(p, "rb") as f:
                return np.frombuffer(f.read(), dtype=np.uint8,
                                     offset=16 if kind == "images" else 8)
    raise SystemExit(f"torch_cnn.py: no {split} {kind} in {d}")


def load(d, split):
    x = torch.from_numpy(read_idx(d, split, "images").astype(np.float32) / 255.0)
    y = torch.from_numpy(read_idx(d, split, "labels").astype(np.int64))
    return x.reshape(-1, 1, 28, 28), y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=FASHION_DIR)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    a = parse_args(ap)
    xtr, ytr = load(a.data, "train")
    xte, yte = load(a.data, "t10k")
    if a.limit:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    if a.test_limit:
        xte, yte = xte[:a.test_limit], yte[:a.test_limit]
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n = xtr.shape[0]
    clock, train_loss = Clock(), float("nan")  # training time of each epoch
    for e in range(a.epochs):
        perm = torch.randperm(n)
        tot, cnt = 0.0, 0
        with clock:
            for s in range(0, n, a.batch):
                idx = perm[s:s + a.batch]
                loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * idx.numel()
                cnt += idx.numel()
        dt = clock.wall[-1]
        train_loss = tot / cnt
        with torch.no_grad():
            correct, tl = 0, 0.0
            for s in range(0, xte.shape[0], 1000):
                logits = net(xte[s:s + 1000])
                tl += F.cross_entropy(logits, yte[s:s + 1000], reduction="sum").item()
                correct += (logits.argmax(1) == yte[s:s + 1000]).sum().item()
        acc, test_loss = correct / xte.shape[0], tl / xte.shape[0]
        print(f"epoch {e + 1}/{a.epochs}  train loss {train_loss:.4f}  test loss "
              f"{test_loss:.4f}  test acc {acc:.4f}  {dt:.2f} s  {n / dt:.0f} samples/s",
              flush=True)
    spe = sum(clock.wall) / a.epochs
    print(f"pytorch {torch.__version__}, {a.threads} thread(s): {spe:.2f} s per epoch of {n} "
          f"images")
    if a.json:
        print(json.dumps({"side": "pytorch", "test_accuracy": round(acc, 4),
                          "test_loss": round(test_loss, 4), "train_loss": round(train_loss, 4),
                          "seconds_per_epoch": round(spe, 3),
                          "cpu_seconds_per_epoch": round(sum(clock.cpu) / a.epochs, 3),
                          "samples_per_second": round(n / spe, 1), "train_samples": n,
                          "threads": a.threads}))


if __name__ == "__main__":
    main()
