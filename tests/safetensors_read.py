#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Minimal, independent safetensors reader (json + struct only, no tapegrad code).

Usage: safetensors_read.py FILE

Reads the 8-byte little-endian header length and the JSON header, checks that
the tensors' data_offsets tile the data section exactly (contiguous from 0, no
holes, no overlaps, ending at the end of the file) and that each tensor's byte
size matches its dtype and shape, then prints one line per tensor, in file
(offset) order:

    name<TAB>dtype<TAB>[d0,d1,...]<TAB>sum

where sum is the sum of the values, accumulated left to right in double
precision, printed with repr() (it round-trips exactly). Metadata entries are
printed as "meta<TAB>key<TAB>value" lines first. Exits with status 1 and a
message on stderr if the file is malformed.
"""
import json
import struct
import sys

FORMATS = {"F32": ("f", 4), "F64": ("d", 8), "I32": ("i", 4)}


def fail(msg):
    sys.stderr.write("safetensors_read: %s\n" % msg)
    sys.exit(1)


def main(argv):
    if len(argv) != 2:
        fail("usage: safetensors_read.py FILE")
    with open(argv[1], "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        fail("file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > 100000000 or 8 + n > len(blob):
        fail("bad header length %d" % n)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    for key in sorted(meta):
        if not isinstance(meta[key], str):
            fail("metadata %r is not a string" % key)
        print("meta\t%s\t%s" % (key, meta[key]))

    tensors = sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))
    at = 0
    for name, info in tensors:
        if set(info) != {"dtype", "shape", "data_offsets"}:
            fail("tensor %r has keys %r" % (name, sorted(info)))
        fmt, size = FORMATS.get(info["dtype"], (None, None))
        if fmt is None:
            fail("tensor %r: unknown dtype %r" % (name, info["dtype"]))
        begin, end = info["data_offsets"]
        if begin != at:
            fail("tensor %r begins at %d, expected %d" % (name, begin, at))
        count = 1
        for d in info["shape"]:
            count *= d
        if end - begin != count * size or end > len(data):
            fail("tensor %r: bad data_offsets [%d,%d]" % (name, begin, end))
        values = struct.unpack("<%d%s" % (count, fmt), data[begin:end])
        total = 0.0
        for v in values:
            total += v
        shape = "[" + ",".join(str(d) for d in info["shape"]) + "]"
        print("%s\t%s\t%s\t%r" % (name, info["dtype"], shape, total))
        at = end
    if at != len(data):
        fail("%d unused bytes at the end of the data section" % (len(data) - at))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
