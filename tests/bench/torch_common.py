# SPDX-License-Identifier: MIT
"""What the PyTorch twins of the examples share (torch_cnn.py, torch_rnn.py,
torch_gpt.py): the options every twin takes and the thread setting, the options of the
two language models and their character corpus (read exactly as char_rnn and char_gpt
read it), and the clock of their timed sections."""
import argparse
import ctypes
import time

import torch


def set_threads(n):
    """torch's threads, and OpenBLAS's (Debian's torch does its GEMMs there, and
    OpenBLAS's pthreads ignore torch's setting)"""
    torch.set_num_threads(n)
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(n)
    except (OSError, AttributeError):
        pass


def parse_args(ap):
    """Parses ap's options and those of every twin (--threads, 1 by default; --seed,
    1; --json), then sets the threads (set_threads) and torch's seed."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    set_threads(a.threads)
    torch.manual_seed(a.seed)
    return a


def lm_parser(lr, description=None):
    """A parser with the options of the language-model twins: --text FILE, --steps
    (200), --seconds (0: run --steps), --batch (32), --lr (lr)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--text", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=0, help="train this long instead of --steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=lr)
    return ap


def char_corpus(path):
    """The file's bytes as ids into its sorted byte vocabulary; the last tenth is held
    out. Returns (vocab, ids, n_val)."""
    data = open(path, "rb").read()
    vocab = sorted(set(data))
    index = {b: i for i, b in enumerate(vocab)}
    ids = torch.tensor([index[b] for b in data], dtype=torch.long)
    return vocab, ids, len(ids) // 10


class Clock:
    """The wall (time.perf_counter) and CPU (time.process_time) seconds of timed
    sections: each `with clock:` appends one to clock.wall and clock.cpu."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def __enter__(self):
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)
        return False
