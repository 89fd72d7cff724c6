#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Expected values for tests/ops/test_ops_conv.c, computed with PyTorch (float64).

Run by hand (needs torch; the test itself does not):
    /usr/bin/python3 tests/conv_reference.py > tests/ops/conv_reference.h
Generated with torch 1.13.

Inputs are formulas of the flat index i, written identically in the C test:
    x[i] = sin(0.37 i + 0.1)      w[i] = 0.5 cos(0.53 i + 0.2)
    b[i] = 0.1 i - 0.15           r[i] = sin(0.11 i + 0.5)  (projection weights)
For each case the output y and the gradients of loss = sum(r * y).
"""
import math

import torch
import torch.nn.functional as F


def fx(n):
    return torch.tensor([math.sin(0.37 * i + 0.1) for i in range(n)], dtype=torch.float64)


def fw(n):
    return torch.tensor([0.5 * math.cos(0.53 * i + 0.2) for i in range(n)], dtype=torch.float64)


def fb(n):
    return torch.tensor([0.1 * i - 0.15 for i in range(n)], dtype=torch.float64)


def fr(n):
    return torch.tensor([math.sin(0.11 * i + 0.5) for i in range(n)], dtype=torch.float64)


def emit(name, t):
    """one line per array: the data is a table, not code"""
    v = t.detach().reshape(-1).tolist()
    print(f"static const double {name}[{len(v)}] = {{" + ", ".join(f"{x:.17g}" for x in v) + "};")
    return name, len(v)


def make(shape, f):
    n = 1
    for s in shape:
        n *= s
    return f(n).reshape(shape).requires_grad_(True)


def conv_case(name, xs, ws, bias, stride, padding):
    x = make(xs, fx)
    w = make(ws, fw)
    b = make([ws[0]], fb) if bias else None
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    (y * fr(y.numel()).reshape(y.shape)).sum().backward()
    print(f"/* {name}: F.conv2d(x {list(xs)}, w {list(ws)}, bias={bias}, stride={stride}, "
          f"padding={padding}) -> {list(y.shape)} */")
    arrays = [emit(f"{name}_y", y), emit(f"{name}_dx", x.grad), emit(f"{name}_dw", w.grad)]
    db = emit(f"{name}_db", b.grad)[0] if bias else "NULL"
    sizes = ", ".join(str(n) for _, n in arrays)
    names = ", ".join(a for a, _ in arrays)
    return (f'{{"{name}", {{{dims(xs)}}}, {{{dims(ws)}}}, {int(bias)}, {stride}, {padding}, '
            f"{sizes}, {names}, {db}}},")


def pool_case(name, fn, xs, k, s):
    x = make(xs, fx)
    y = fn(x, k, s)
    (y * fr(y.numel()).reshape(y.shape)).sum().backward()
    print(f"/* {name}: {fn.__name__}(x {list(xs)}, {k}, {s}) -> {list(y.shape)} */")
    (ya, ny), (dxa, nx) = emit(f"{name}_y", y), emit(f"{name}_dx", x.grad)
    return (f'{{"{name}", {int(fn is F.max_pool2d)}, {{{dims(xs)}}}, {k}, {s}, '
            f"{{{dims(y.shape)}}}, {ny}, {nx}, {ya}, {dxa}}},")


def dims(shape):
    return ", ".join(str(d) for d in shape)


def table(decl, rows):
    print(decl + " = {")
    for r in rows:
        print("    " + r)
    print("};")


print("/* SPDX-License-Identifier: MIT */")
print("/* conv_reference.h: written by tests/conv_reference.py (torch "
      f"{torch.__version__}); do not edit. */")
print("/* the row types conv_ref and pool_ref are test_ops_conv.c's */")
convs = [conv_case("conv_a", (2, 3, 7, 6), (4, 3, 3, 2), True, 2, 1),
         conv_case("conv_b", (1, 2, 5, 5), (3, 2, 5, 5), False, 1, 2),
         conv_case("conv_c", (2, 3, 6, 5), (2, 3, 1, 1), True, 1, 0)]
pools = [pool_case("maxp", F.max_pool2d, (2, 2, 7, 6), 3, 2),
         pool_case("avgp", F.avg_pool2d, (2, 2, 7, 6), 2, 1)]
print()
table("static const conv_ref CONV_REFS[]", convs)
table("static const pool_ref POOL_REFS[]", pools)
