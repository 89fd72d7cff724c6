#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Expected values for tests/ops/test_ops_attention.c, computed with PyTorch.

Run once by hand (needs torch; the test itself does not):
    /usr/bin/python3 tests/attention_reference.py > /tmp/attention_ref.h
and paste the arrays into tests/ops/test_ops_attention.c. Generated with torch 1.13.

Inputs, identical in the C test (flat index i of each tensor, row-major):
    q[i] = sin(0.37 i + 0.1),  k[i] = cos(0.23 i - 0.4),  v[i] = sin(0.11 i^2 + 0.5),
    w[i] = 0.5 + 0.1 (i % 7)   (weights of the loss sum(w * out))
The reference is written out, not taken from a library attention:
    out = softmax(q k^T / sqrt(D) with -inf where j > i when causal) v
and the gradients of q, k, v are those of sum(w * out), by autograd.
"""
import math

import torch

CASES = [
    # (C name, B, H, T, S, D, causal)
    ("causal", 1, 2, 3, 3, 2, True),
    ("cross", 2, 1, 2, 4, 3, False),
]


def fill(shape, f):
    n = math.prod(shape)
    return torch.tensor([f(i) for i in range(n)], dtype=torch.float64).reshape(shape)


def carray(name, t):
    vals = ", ".join("%.17g" % x for x in t.flatten().tolist())
    return "static const double %s[%d] = {%s};" % (name, t.numel(), vals)


def main():
    for name, B, H, T, S, D, causal in CASES:
        q = fill((B, H, T, D), lambda i: math.sin(0.37 * i + 0.1)).requires_grad_()
        k = fill((B, H, S, D), lambda i: math.cos(0.23 * i - 0.4)).requires_grad_()
        v = fill((B, H, S, D), lambda i: math.sin(0.11 * i * i + 0.5)).requires_grad_()
        w = fill((B, H, T, D), lambda i: 0.5 + 0.1 * (i % 7))
        a = q @ k.transpose(-1, -2) / math.sqrt(D)
        if causal:
            mask = torch.triu(torch.ones(T, S, dtype=torch.bool), diagonal=1)
            a = a.masked_fill(mask, float("-inf"))
        out = torch.softmax(a, dim=-1) @ v
        (w * out).sum().backward()
        print("/* %s: B=%d H=%d T=%d S=%d D=%d causal=%d */" % (name, B, H, T, S, D, causal))
        print(carray("REF_%s_OUT" % name.upper(), out.detach()))
        print(carray("REF_%s_DQ" % name.upper(), q.grad))
        print(carray("REF_%s_DK" % name.upper(), k.grad))
        print(carray("REF_%s_DV" % name.upper(), v.grad))


if __name__ == "__main__":
    main()
