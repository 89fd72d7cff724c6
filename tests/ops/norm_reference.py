#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Reference values for tests/ops/test_ops_norm.c, from PyTorch (float64).

Run with Debian's python3 (PyTorch 1.13):  /usr/bin/python3 tests/ops/norm_reference.py
It prints C arrays that are pasted into the test. The inputs are closed-form
functions of the flat index i and the step t, computed the same way in the
test, so no data file is needed:
    x(i, t) = 1.5 sin(0.7 i + 1.1 t) + 0.3 cos(2.3 i) + 0.2 t
    w(j)    = 1 + 0.1 j - 0.05 j^2
    b(j)    = 0.2 - 0.15 j
    r(i)    = cos(0.9 i) + 0.5     (the weights of the loss sum(r * y))
"""
import math

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def xs(n, t=0):
    return torch.tensor([1.5 * math.sin(0.7 * i + 1.1 * t) + 0.3 * math.cos(2.3 * i) + 0.2 * t
                         for i in range(n)])


def ws(n):
    return torch.tensor([1 + 0.1 * j - 0.05 * j * j for j in range(n)])


def bs(n):
    return torch.tensor([0.2 - 0.15 * j for j in range(n)])


def rs(n):
    return torch.tensor([math.cos(0.9 * i) + 0.5 for i in range(n)])


def arr(name, t):
    v = t.detach().reshape(-1).tolist()
    lines = [", ".join("%.17g" % a for a in v[i:i + 4]) for i in range(0, len(v), 4)]
    print("static const double %s[%d] = {\n    %s};" % (name, len(v), ",\n    ".join(lines)))


# layer norm over the last axis of [3,5], weight and bias, eps 1e-5
x = xs(15).reshape(3, 5).requires_grad_()
w = ws(5).requires_grad_()
b = bs(5).requires_grad_()
y = F.layer_norm(x, (5,), w, b, 1e-5)
(y * rs(15).reshape(3, 5)).sum().backward()
arr("LN_Y", y)
arr("LN_DX", x.grad)
arr("LN_DW", w.grad)
arr("LN_DB", b.grad)

# batch norm: three training steps, then eval, on [2,3,2,3] (momentum 0.1) and [4,3] (0.3)
for tag, shape, mom in (("BN4", (2, 3, 2, 3), 0.1), ("BN2", (4, 3), 0.3)):
    n = math.prod(shape)
    c = shape[1]
    rm = torch.zeros(c)
    rv = torch.ones(c)
    w = ws(c).requires_grad_()
    b = bs(c).requires_grad_()
    for t in range(3):
        x = xs(n, t).reshape(shape).requires_grad_()
        y = F.batch_norm(x, rm, rv, w, b, True, mom, 1e-5)
    (y * rs(n).reshape(shape)).sum().backward()
    arr(tag + "_Y", y)          # the last training step's output
    arr(tag + "_DX", x.grad)    # and its gradients
    arr(tag + "_DW", w.grad)
    arr(tag + "_DB", b.grad)
    arr(tag + "_RM", rm)
    arr(tag + "_RV", rv)
    xe = xs(n, 3).reshape(shape)
    arr(tag + "_EVAL", F.batch_norm(xe, rm, rv, w, b, False, mom, 1e-5))
