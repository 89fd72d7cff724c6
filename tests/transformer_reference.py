#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Expected values for tests/toolkit/test_layers_transformer.c, from PyTorch.

Run once by hand (needs torch; the test itself does not):
    /usr/bin/python3 tests/transformer_reference.py > /tmp/transformer_ref.h
and paste the arrays into the test. Generated with torch 1.13.

The block: nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=12,
dropout=0, activation="gelu", batch_first=True, norm_first=True) in float64,
under a causal mask (-inf above the diagonal). Every parameter is set from a
formula of its flat index i in PyTorch's layout ([out,in] for the weights, as
tapegrad stores them too):
    value = 0.3 sin(0.7 i + s)   with s = 0.1, 0.2, ... in the order of
    named_parameters() (in_proj_weight, in_proj_bias, out_proj.weight,
    out_proj.bias, linear1.weight, linear1.bias, linear2.weight, linear2.bias,
    norm1.weight, norm1.bias, norm2.weight, norm2.bias), plus 1 for the layer
    norm weights.
Input x [2,5,8]: x[i] = sin(0.37 i + 0.1) + 0.5 cos(0.11 i); the loss is
sum(w * y) with w[i] = 0.5 + 0.1 (i % 7); gradients of x and every parameter.
"""
import math

import torch

B, T, E, H, FF = 2, 5, 8, 2, 12


def carray(name, t):
    vals = ", ".join("%.17g" % x for x in t.flatten().tolist())
    return "static const double %s[%d] = {%s};" % (name, t.numel(), vals)


def main():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True).double()
    with torch.no_grad():
        for n, (name, p) in enumerate(layer.named_parameters()):
            s = 0.1 * (n + 1)
            vals = torch.tensor([0.3 * math.sin(0.7 * i + s) for i in range(p.numel())],
                                dtype=torch.float64).reshape(p.shape)
            if name.startswith("norm") and name.endswith("weight"):
                vals += 1
            p.copy_(vals)
    n = B * T * E
    x = torch.tensor([math.sin(0.37 * i + 0.1) + 0.5 * math.cos(0.11 * i) for i in range(n)],
                     dtype=torch.float64).reshape(B, T, E).requires_grad_()
    w = torch.tensor([0.5 + 0.1 * (i % 7) for i in range(n)], dtype=torch.float64).reshape(B, T, E)
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), diagonal=1)
    y = layer(x, src_mask=mask)
    (w * y).sum().backward()
    print("/* B=%d T=%d E=%d H=%d FF=%d, causal */" % (B, T, E, H, FF))
    print(carray("REF_Y", y.detach()))
    print(carray("REF_DX", x.grad))
    for name, p in layer.named_parameters():
        print(carray("REF_D_" + name.replace(".", "_").upper(), p.grad.contiguous()))


if __name__ == "__main__":
    main()
