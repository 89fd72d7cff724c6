# SPDX-License-Identifier: MIT
"""What the PyTorch twins of the examples share (torch_cnn.py, torch_rnn.py,
torch_gpt.py): the thread setting and the character corpus of the language models,
read exactly as char_rnn and char_gpt read it."""
import ctypes

import torch


def set_threads(n):
    """torch's threads, and OpenBLAS's (Debian's torch does its GEMMs there, and
    OpenBLAS's pthreads ignore torch's setting)"""
    torch.set_num_threads(n)
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(n)
    except (OSError, AttributeError):
        pass


def char_corpus(path):
    """The file's bytes as ids into its sorted byte vocabulary; the last tenth is held
    out. Returns (vocab, ids, n_val)."""
    data = open(path, "rb").read()
    vocab = sorted(set(data))
    index = {b: i for i, b in enumerate(vocab)}
    ids = torch.tensor([index[b] for b in data], dtype=torch.long)
    return vocab, ids, len(ids) // 10
