#!/usr/bin/env python3
"""Carry a safetensors model to the GPU machine at a quarter of its f32 size, standard library only.

The device tool carries at most 64 MiB, and MiniLM's f32 weights alone are 91 MB. `pack` writes
every matrix as int8 with one f32 scale per row (max |x| / 127) and keeps vectors and non-f32 tensors as they are; `unpack`
writes the f32 safetensors back. The round trip changes each weight by at most half a step of
its row (0.4 % of the row's largest magnitude); `pack --check` prints the worst relative error.

    int8_weights.py pack   model.safetensors packed.safetensors [--check]
    int8_weights.py unpack packed.safetensors model.safetensors
"""
import array
import json
import os
import struct
import sys

SCALE_SUFFIX = ".__row_scale"


def read(path):
    """(header dict without __metadata__, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, memoryview(blob)[8 + n :]


def write(path, tensors):
    """Write [(name, dtype, shape, bytes)] as safetensors via a temporary name, fsync, rename."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, _, _, data in tensors:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def floats(data):
    values = array.array("f")
    values.frombytes(bytes(data))
    if sys.byteorder != "little":
        values.byteswap()
    return values


def pack(src, dst, check):
    header, data = read(src)
    out, worst = [], 0.0
    for name in sorted(header):
        info = header[name]
        lo, hi = info["data_offsets"]
        shape = info["shape"]
        if info["dtype"] != "F32" or len(shape) < 2:
            out.append((name, info["dtype"], shape, bytes(data[lo:hi])))
            continue
        values = floats(data[lo:hi])
        cols = shape[-1]
        codes, scales = array.array("b"), array.array("f")
        for r in range(0, len(values), cols):
            row = values[r : r + cols]
            scale = max(map(abs, row)) / 127.0 or 1.0
            q = [max(-127, min(127, round(x / scale))) for x in row]
            codes.extend(q)
            scales.append(scale)
            if check:
                top = max(map(abs, row)) or 1.0
                worst = max(worst, max(abs(x - c * scale) for x, c in zip(row, q)) / top)
        out.append((name, "I8", shape, codes.tobytes()))
        out.append((name + SCALE_SUFFIX, "F32", [len(scales)], scales.tobytes()))
    write(dst, out)
    if check:
        print(f"worst error relative to its row's largest weight: {worst:.2e}")


def unpack(src, dst):
    header, data = read(src)
    out = []
    for name in sorted(header):
        if name.endswith(SCALE_SUFFIX):
            continue
        info = header[name]
        lo, hi = info["data_offsets"]
        if info["dtype"] != "I8":
            out.append((name, info["dtype"], info["shape"], bytes(data[lo:hi])))
            continue
        codes = array.array("b")
        codes.frombytes(bytes(data[lo:hi]))
        s = header[name + SCALE_SUFFIX]
        scales = floats(data[s["data_offsets"][0] : s["data_offsets"][1]])
        cols = info["shape"][-1]
        values = array.array("f", (c * scales[i // cols] for i, c in enumerate(codes)))
        out.append((name, "F32", info["shape"], values.tobytes()))
    write(dst, out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) >= 3 and args[0] == "pack":
        pack(args[1], args[2], "--check" in args[3:])
    elif len(args) == 3 and args[0] == "unpack":
        unpack(args[1], args[2])
    else:
        sys.exit(__doc__)
