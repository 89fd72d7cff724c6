#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""examples/char_gpt.c's model and training step in PyTorch 1.13, for speed and
loss comparisons (run with Debian's /usr/bin/python3, one thread by default).

    /usr/bin/python3 tests/bench/torch_gpt.py --text kjv.txt --steps 50 --json
    /usr/bin/python3 tests/bench/torch_gpt.py --text kjv.txt --seconds 60 --json

The same model as char_gpt: token embedding [V,C] + position embedding [T,C],
L nn.TransformerEncoderLayer(C, H, F, dropout=0, activation="gelu",
batch_first=True, norm_first=True) under a causal mask, a final LayerNorm and a
linear head; PyTorch's default initialisation; AdamW lr 3e-4 (other defaults);
batches of B windows of T characters at random offsets of the first nine
tenths of the text; val_loss in nats per character over the held-out last
tenth, windows of T characters as char_gpt evaluates it. The last line with
--json is one JSON object: val_loss, ms_per_step (the mean of the steps after
the first), steps and the rest, with the same keys as char_gpt's.
"""
import json
import time

import torch

from torch_common import Clock, char_corpus, lm_parser, parse_args


class GPT(torch.nn.Module):
    def __init__(self, vocab, layers, heads, width, context, ff):
        super().__init__()
        self.tok_emb = torch.nn.Embedding(vocab, width)
        self.pos_emb = torch.nn.Embedding(context, width)
        self.blocks = torch.nn.ModuleList([
            torch.nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
            for _ in range(layers)])
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        h = self.tok_emb(x) + self.pos_emb(torch.arange(t))
        for b in self.blocks:
            h = b(h, src_mask=mask)
        return self.head(self.ln_f(h))


def evaluate(model, ids, t, batch):
    """mean loss per character over ids, windows of t (the last one shorter)"""
    total, count, start, n = 0.0, 0, 0, len(ids)
    with torch.no_grad():
        while start + 1 < n:
            left = n - 1 - start
            if left < t:
                nb, tt = 1, left
            else:
                nb, tt = min(batch, left // t), t
            x = torch.stack([ids[start + w * tt:start + (w + 1) * tt] for w in range(nb)])
            y = torch.stack([ids[start + w * tt + 1:start + (w + 1) * tt + 1] for w in range(nb)])
            start += nb * tt
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     y.reshape(-1), reduction="sum")
            total += loss.item()
            count += nb * tt
    return total / count


def main():
    ap = lm_parser(lr=3e-4, description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--ff", type=int, default=512)
    ap.add_argument("--eval-chars", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    a = parse_args(ap)

    vocab, ids, n_val = char_corpus(a.text)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    model = GPT(len(vocab), a.layers, a.heads, a.width, a.context, a.ff)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    n_params = sum(p.numel() for p in model.parameters())
    print("torch_gpt: %d characters, vocabulary %d, %d parameters, torch %s, %d thread(s)"
          % (len(ids), len(vocab), n_params, torch.__version__, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(a.seed)
    t, b = a.context, a.batch
    clock, step, loss_acc, loss_n, last = Clock(), 0, 0.0, 0, float("nan")
    times, cpu = clock.wall, clock.cpu
    t_start = time.perf_counter()
    while (step < a.steps) if a.seconds <= 0 else (time.perf_counter() - t_start < a.seconds):
        with clock:
            at = torch.randint(0, len(train) - t, (b,), generator=gen)
            x = torch.stack([train[i:i + t] for i in at.tolist()])
            y = torch.stack([train[i + 1:i + t + 1] for i in at.tolist()])
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = loss.item()
        step += 1
        loss_acc, loss_n = loss_acc + last, loss_n + 1
        if a.log_every and step % a.log_every == 0:
            print("step %6d  train loss %.4f  %.1f ms/step"
                  % (step, loss_acc / loss_n, 1e3 * sum(times[1:]) / max(1, len(times) - 1)),
                  flush=True)
            loss_acc, loss_n = 0.0, 0
    ms = 1e3 * (sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0])
    cpu_ms = 1e3 * (sum(cpu[1:]) / (len(cpu) - 1) if len(cpu) > 1 else cpu[0])
    ev = val[:a.eval_chars] if a.eval_chars else val
    t0 = time.perf_counter()
    val_loss = evaluate(model, ev, t, b)
    print("held-out loss %.4f nats/char over %d characters (%.1f s)"
          % (val_loss, len(ev), time.perf_counter() - t0))
    if a.json:
        print(json.dumps({"val_loss": round(val_loss, 6), "ms_per_step": round(ms, 3),
                          "cpu_ms_per_step": round(cpu_ms, 3),
                          "steps": step, "last_train_loss": round(last, 6),
                          "val_chars": len(ev), "params": n_params,
                          "threads": torch.get_num_threads(), "impl": "pytorch"}))


if __name__ == "__main__":
    main()
