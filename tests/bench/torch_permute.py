#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""PyTorch's side of bench_permute.c: x.permute(perm).contiguous() on a
[32,64,4,32] float32 tensor, one thread; best and median microseconds per call
over REPS batches of 20 calls. Run with Debian's python3-torch:
    /usr/bin/python3 tests/bench/torch_permute.py [reps]
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 50
BATCH = 20
x = torch.empty(32, 64, 4, 32).uniform_(-1, 1)
out = []
for perm in [(0, 2, 1, 3), (0, 2, 3, 1), (0, 1, 3, 2), (3, 2, 1, 0)]:
    ts = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(BATCH):
            x.permute(*perm).contiguous()
        ts.append((time.perf_counter() - t0) / BATCH * 1e6)
    ts.sort()
    out.append({"perm": list(perm), "forward_us_best": round(ts[0], 1),
                "forward_us_median": round(ts[REPS // 2], 1)})
print(json.dumps({"shape": [32, 64, 4, 32], "dtype": "f32", "threads": 1, "results": out}))
