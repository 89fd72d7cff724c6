#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""torch_rnn.py: examples/char_rnn.c's training step in PyTorch 1.13, for the speed ratio.

The same model and step: one-hot characters [T,N,V] -> nn.LSTM(V, H, num_layers=L)
-> nn.Linear(H, V) -> cross-entropy (mean nats per character), Adam lr 2e-3, gradients
clipped to norm 5, N random windows of T + 1 characters of the first nine tenths of the
text per step; validation over the last tenth in windows of T characters from a zero
state, as char_rnn does.

  torch_rnn.py --text FILE [--steps N] [--seconds S] [--threads K] [--hidden H]
               [--layers L] [--seq T] [--batch N] [--seed S] [--json]

Run it with Debian's /usr/bin/python3 (python3-torch imports there). One thread by
default: torch.set_num_threads and, since Debian's PyTorch does its GEMMs in OpenBLAS,
openblas_set_num_threads too. Prints progress; --json ends with one JSON line with
ms_per_step (median of the steps after the first 5), cpu_ms_per_step (their mean
CPU time) and val_loss.
"""
import json
import statistics
import time

import torch

from torch_common import Clock, char_corpus, lm_parser, parse_args


def main():
    ap = lm_parser(lr=2e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    a = parse_args(ap)

    vocab, ids, n_val = char_corpus(a.text)
    n = len(ids)
    n_train = n - n_val
    V, H, L, T, N = len(vocab), a.hidden, a.layers, a.seq, a.batch

    lstm = torch.nn.LSTM(V, H, num_layers=L)
    head = torch.nn.Linear(H, V)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    eye = torch.eye(V)
    g = torch.Generator().manual_seed(a.seed)
    print("torch_rnn: %d bytes, vocabulary %d, LSTM %d x %d, T %d, N %d, %d thread(s), torch %s"
          % (n, V, L, H, T, N, a.threads, torch.__version__), flush=True)

    def logits_of(win):  # win [N, T+1] ids -> logits [T N, V], targets [T N]
        x = eye[win[:, :-1].t()]  # [T, N, V]
        h, _ = lstm(x)
        return head(h.reshape(-1, H)), win[:, 1:].t().reshape(-1)

    clock, first, t0 = Clock(), None, time.perf_counter()
    offs = torch.arange(T + 1)
    for s in range(1, a.steps + 1):
        with clock:
            pos = torch.randint(0, n_train - T - 1, (N,), generator=g)
            win = ids[pos[:, None] + offs]
            lg, y = logits_of(win)
            loss = torch.nn.functional.cross_entropy(lg, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            l = loss.item()
        if first is None:
            first = l
        if s % max(1, a.steps // 20) == 0 or s == 1:
            print("  step %6d/%d  loss %.4f  %.1f s" % (s, a.steps, l, time.perf_counter() - t0),
                  flush=True)
        if a.seconds and time.perf_counter() - t0 >= a.seconds:
            break
    times, cpu = clock.wall, clock.cpu
    steps = len(times)
    warm = times[5:] if steps > 10 else times[1:] or times
    ms = 1e3 * statistics.median(warm)
    ms_mean = 1e3 * sum(warm) / len(warm)
    cpu_warm = cpu[5:] if steps > 10 else cpu[1:] or cpu
    cpu_ms = 1e3 * sum(cpu_warm) / len(cpu_warm)

    with torch.no_grad():
        val = ids[n_train:]
        windows = (len(val) - 1) // T
        tot, cnt = 0.0, 0
        for w0 in range(0, windows, N):
            nb = min(N, windows - w0)
            starts = torch.arange(w0, w0 + nb) * T
            win = val[starts[:, None] + offs]
            lg, y = logits_of(win)
            tot += torch.nn.functional.cross_entropy(lg, y, reduction="sum").item()
            cnt += y.numel()
        val_loss = tot / cnt
    print("trained %d steps in %.1f s: %.1f ms per step (median; mean %.1f, CPU %.1f); "
          "loss %.4f -> %.4f; held-out %.4f nats per character"
          % (steps, time.perf_counter() - t0, ms, ms_mean, cpu_ms, first, l, val_loss), flush=True)
    if a.json:
        print(json.dumps({"side": "pytorch", "example": "char_rnn", "ms_per_step": ms,
                          "ms_per_step_mean": ms_mean, "cpu_ms_per_step": cpu_ms, "val_loss": val_loss, "steps": steps,
                          "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
