#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""PyTorch's side of tests/bench/bench_norm.c: F.layer_norm forward + backward.

    /usr/bin/python3 tests/bench/norm_torch.py [rows cols reps]   default 2048 128 2000

x [rows,cols], weight and bias [cols]: float32 leaves requiring grad, whose
gradients accumulate from step to step (as tapegrad's parameters do in
bench_norm.c); one step is y = F.layer_norm(x, (cols,), w, b, 1e-5) then
y.backward(dy). One thread. Prints the median over
7 batches of reps/7 steps, in microseconds of thread CPU time per step.
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

rows, cols, reps = (int(a) for a in (sys.argv[1:4] if len(sys.argv) > 3 else (2048, 128, 2000)))
torch.set_num_threads(1)
torch.manual_seed(1)
x = (torch.rand(rows, cols) * 2 - 1).requires_grad_()
w = (torch.rand(cols) + 0.5).requires_grad_()
b = (torch.rand(cols) * 2 - 1).requires_grad_()
dy = torch.rand(rows, cols) * 2 - 1
per = max(reps // 7, 1)
times = []
for k in range(-1, 7):
    t0 = time.thread_time()
    for _ in range(per):
        y = F.layer_norm(x, (cols,), w, b, 1e-5)
        y.backward(dy)
    if k >= 0:
        times.append((time.thread_time() - t0) / per)
print("PyTorch %s F.layer_norm fwd+bwd [%d,%d] f32, 1 thread: %.1f us/step (median of 7)"
      % (torch.__version__, rows, cols, statistics.median(times) * 1e6))
