#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""PyTorch reference values for the op tests.

Run with Debian's /usr/bin/python3 (PyTorch 1.13, float64 throughout):

  /usr/bin/python3 tests/ops_reference.py            check the numbers in the tests
  /usr/bin/python3 tests/ops_reference.py --update   write them

1. tests/ops/test_ops_unary.c: each row of UNARY[] names its op's PyTorch
   expression of x; at x_k = lo + (hi - lo) (k + 0.5) / 5 this evaluates y and
   the gradient of sum_k w_k y_k with w_k = (k + 1) / 5 and writes both lists
   into the row.
2. tests/ops/test_ops_reduce_shape.c: the block between the markers
   "ops_reference.py: axis" holds x.mean(axis) and x.max(axis) of a fixed
   [2,3,4] x with ties, and the gradients of sum(w * y), for every axis.
"""
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: F401 (used by the rows' expressions)

torch.set_default_dtype(torch.float64)
HERE = Path(__file__).resolve().parent
NREF = 5


def fmt(v):
    return repr(float(v)) if v == v else "NAN"


def clist(vals, indent=6, width=96):
    """A C initializer list, wrapped at width columns."""
    out, line = [], "{"
    for i, v in enumerate(vals):
        item = fmt(v) + (", " if i + 1 < len(vals) else "}")
        if len(line) + len(item.rstrip()) + indent > width and line.strip("{"):
            out.append(line.rstrip())
            line = " " * indent
        line += item
    return "\n".join(out + [line if vals else "{}"])


# ---- 1. the unary table --------------------------------------------------------

ROW = re.compile(
    r'(\{"(?P<name>[^"]+)", \w+, (?P<lo>[-0-9.e]+), (?P<hi>[-0-9.e]+), (?:NOKINK|\{[^}]*\}), '
    r'"(?P<torch>[^"]*)",\s*)\{[^}]*\},\s*\{[^}]*\}\}')


def unary_values(m):
    lo, hi = float(m["lo"]), float(m["hi"])
    x = torch.tensor([lo + (hi - lo) * (k + 0.5) / NREF for k in range(NREF)],
                     requires_grad=True)
    w = torch.tensor([(k + 1.0) / NREF for k in range(NREF)])
    y = eval(m["torch"], {"torch": torch, "F": F, "x": x})
    (y * w).sum().backward()
    return y.detach().tolist(), x.grad.tolist()


def unary_rows(text):
    def sub(m):
        y, dx = unary_values(m)
        return m.group(1) + clist(y, 6) + ",\n     " + clist(dx, 6) + "}"
    return ROW.sub(sub, text), len(ROW.findall(text))


# ---- 2. the axis reductions ---------------------------------------------------

AXIS = re.compile(r"(/\* ops_reference.py: axis \*/\n).*?(/\* ops_reference.py: axis end \*/)",
                  re.S)


def axis_x():
    # [2,3,4] with ties: (7 i mod 11 - 5) / 4
    return torch.tensor([((7 * i) % 11 - 5) / 4 for i in range(24)]).reshape(2, 3, 4)


def axis_w(n):
    return torch.tensor([0.5 + ((3 * i) % 7) / 7 for i in range(n)])


def axis_block():
    lines = []
    for op in ("mean", "max"):
        for axis in range(3):
            x = axis_x().requires_grad_(True)
            y = x.mean(axis) if op == "mean" else x.max(axis).values
            (y * axis_w(y.numel()).reshape(y.shape)).sum().backward()
            lines.append("    {\"%s\", %d,\n     %s,\n     %s}," % (
                op, axis, clist(y.detach().flatten().tolist(), 6),
                clist(x.grad.flatten().tolist(), 6)))
    return "\n".join(lines) + "\n"


def axis_rows(text):
    return AXIS.sub(lambda m: m.group(1) + axis_block() + m.group(2), text), len(
        AXIS.findall(text))


# ---- main -----------------------------------------------------------------------

def main():
    update = "--update" in sys.argv[1:]
    stale = []
    for rel, fix in (("ops/test_ops_unary.c", unary_rows),
                     ("ops/test_ops_reduce_shape.c", axis_rows)):
        path = HERE / rel
        old = path.read_text()
        new, n = fix(old)
        if n == 0:
            sys.exit(f"{rel}: no reference rows found")
        if new != old:
            stale.append(rel)
            if update:
                path.write_text(new)
    if stale and not update:
        sys.exit("stale reference values in " + ", ".join(stale) + " (run with --update)")
    print(("updated " if update and stale else "up to date: ") + ", ".join(stale or ["all"]))


if __name__ == "__main__":
    main()
