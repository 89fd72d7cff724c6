#!/usr/bin/env python3
"""Write the small committed fixtures of tests/toolkit/test_data.c (run from tests/data)."""
import gzip
import struct

n, r, c = 6, 3, 2
imgs = bytes((i * 37 + 11) % 256 for i in range(n * r * c))
imgs = bytes([0, 255]) + imgs[2:]
labels = bytes([0, 1, 2, 1, 0, 2])
ih = struct.pack('>BBBBIII', 0, 0, 8, 3, n, r, c) + imgs
lh = struct.pack('>BBBBI', 0, 0, 8, 1, n) + labels
open('tiny-images-idx3-ubyte', 'wb').write(ih)
open('tiny-labels-idx1-ubyte', 'wb').write(lh)
# mtime=0: the same bytes every time
open('tiny-images-idx3-ubyte.gz', 'wb').write(gzip.compress(ih, mtime=0))
open('tiny-labels-idx1-ubyte.gz', 'wb').write(gzip.compress(lh, mtime=0))
# malformed: bad magic, truncated data, label count mismatch
open('bad-magic-idx3-ubyte', 'wb').write(b'\x00\x00\x07\x03' + ih[4:])
open('truncated-images-idx3-ubyte', 'wb').write(ih[:-5])
open('five-labels-idx1-ubyte', 'wb').write(struct.pack('>BBBBI', 0, 0, 8, 1, 5) + labels[:5])

open('iris-tiny.csv', 'wb').write(
    b'sepal_len,sepal_wid,"petal len",petal_wid,species\r\n'
    b'5.1,3.5,1.4,0.2,0\r\n4.9,3.0,1.4,0.2,0\r\n7.0,3.2,4.7,1.4,1\r\n'
    b'6.4,3.2,4.5,1.5,1\r\n6.3,3.3,6.0,2.5,2\r\n5.8,2.7,5.1,1.9,2\r\n\r\n')
open('bad-field-count.csv', 'wb').write(b'x1,x2,y\n1,2,0\n3,4\n5,6,1\n')
open('bad-number.csv', 'wb').write(b'0.5;1.5;2\n0.25;oops;1\n')
