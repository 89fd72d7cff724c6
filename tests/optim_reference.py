#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Expected values for tests/toolkit/test_optim.c (and the Adam trajectories for
tests/kernels/test_vmath.c), computed with PyTorch's optimisers.

Run by hand (needs torch; the test itself does not):
    /usr/bin/python3 tests/optim_reference.py > tests/optim_reference.h
Generated with torch 1.13. Each array is one line: the file is a table of data.

The problem, identical in the C test: two float64 parameters
    p = [0.5, -1.2, 2.0]   q = [1.0, -0.5]
and the gradient of  sum(0.5 c p^2 + d p) + sum(0.5 e q^2 + f q), i.e.
    grad p = c p + d,   grad q = e q + f,
evaluated at the current parameters before each of STEPS steps. In the
"skip" cases q has no gradient (grad None) at step 2 (0-based 1), so its
state does not advance there.
"""
import torch

STEPS = 4
P0 = [0.5, -1.2, 2.0]
Q0 = [1.0, -0.5]
C = [1.0, 2.0, 0.5]
D = [0.3, -0.4, 0.1]
E = [1.5, 0.7]
F = [-0.2, 0.25]

CASES = [
    # (C name, torch class, kwargs, q skipped at step 1)
    ("sgd_plain", torch.optim.SGD, dict(lr=0.1), False),
    ("sgd_momentum_wd", torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01), False),
    ("sgd_dampening", torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.5), False),
    ("sgd_nesterov_wd", torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True), False),
    ("sgd_momentum_skip", torch.optim.SGD, dict(lr=0.1, momentum=0.9), True),
    ("rmsprop_default", torch.optim.RMSprop, dict(), False),
    ("rmsprop_centered_momentum_wd", torch.optim.RMSprop,
     dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.1), False),
    ("rmsprop_momentum", torch.optim.RMSprop, dict(lr=0.02, momentum=0.5), False),
    ("rmsprop_centered", torch.optim.RMSprop, dict(lr=0.02, centered=True), False),
    ("adam_default", torch.optim.Adam, dict(), False),
    ("adam_wd", torch.optim.Adam, dict(lr=0.1, weight_decay=0.1), False),
    ("adam_amsgrad", torch.optim.Adam, dict(lr=0.1, betas=(0.8, 0.9), amsgrad=True), False),
    ("adam_skip", torch.optim.Adam, dict(lr=0.1), True),
    ("adamw_default", torch.optim.AdamW, dict(), False),
    ("adamw_wd", torch.optim.AdamW, dict(lr=0.1, weight_decay=0.1), False),
    ("adamw_amsgrad", torch.optim.AdamW, dict(lr=0.1, weight_decay=0.05, amsgrad=True), False),
]


def run(cls, kwargs, skip):
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    q = torch.tensor(Q0, dtype=torch.float64, requires_grad=True)
    c, d = torch.tensor(C, dtype=torch.float64), torch.tensor(D, dtype=torch.float64)
    e, f = torch.tensor(E, dtype=torch.float64), torch.tensor(F, dtype=torch.float64)
    opt = cls([p, q], foreach=False, **kwargs)
    out = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = (0.5 * c * p * p + d * p).sum()
        if not (skip and step == 1):
            loss = loss + (0.5 * e * q * q + f * q).sum()
        loss.backward()
        if skip and step == 1:
            assert q.grad is None
        opt.step()
        out.append(p.detach().tolist() + q.detach().tolist())
    return out


def numbers(v):
    return ", ".join("%.17g" % x for x in v)


def trajectories():
    print("/* rows: the 5 parameter values (p then q) after steps 1..%d */" % STEPS)
    for name, cls, kwargs, skip in CASES:
        rows = run(cls, kwargs, skip)
        print("static const double ref_%s[%d][5] = {%s};" %
              (name, STEPS, ", ".join("{" + numbers(r) + "}" for r in rows)))


# ---- schedules and clipping ----------------------------------------------------------

def sched_values(make, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    s = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out


def schedules():
    S = torch.optim.lr_scheduler
    cases = [
        ("step", lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
        ("exponential", lambda o: S.ExponentialLR(o, gamma=0.9)),
        ("cosine", lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.001)),
        # warm-up W = 4 then cosine over total_steps 14 - 4 = 10
        ("warmup_cosine", lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=1 / 4, end_factor=1.0, total_iters=3),
                S.CosineAnnealingLR(o, T_max=10, eta_min=0.001)], milestones=[4])),
    ]
    print("/* the lr at steps 0..13 of StepLR(3, 0.5), ExponentialLR(0.9),")
    print(" * CosineAnnealingLR(T_max 10, eta_min 0.001), and SequentialLR of")
    print(" * LinearLR(1/4, 1, total_iters 3) then that cosine at milestone 4; base lr 0.1 */")
    for name, make in cases:
        v = sched_values(make, 14)
        print("static const double ref_sched_%s[14] = {%s};" % (name, numbers(v)))


def clipping():
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    a.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    b.grad = torch.tensor([12.0], dtype=torch.float64)
    n = torch.nn.utils.clip_grad_norm_([a, b], 6.5)
    print("/* clip_grad_norm_([a, b], 6.5), grads [3,4] and [12]: norm %.17g */" % n.item())
    print("static const double ref_clip[3] = {%s};" % numbers(a.grad.tolist() + b.grad.tolist()))


if __name__ == "__main__":
    print("/* SPDX-License-Identifier: MIT */")
    print("/* optim_reference.h: written by tests/optim_reference.py (torch %s); do not edit. */"
          % torch.__version__)
    trajectories()
    schedules()
    clipping()
