"""Minimal reader/writer for the safetensors format.

Layout: an 8-byte little-endian u64 N, then N bytes of JSON (padded with spaces
to a multiple of 8) mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} plus an optional
"__metadata__" of string->string, then the raw little-endian row-major data.
Offsets are relative to the end of the header; tensors are stored back to back
in the order given.
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np
import torch

# torch dtype -> (safetensors dtype, numpy dtype of the same size used for byte I/O)
_TO_ST = {
    torch.float32: ("F32", "<f4"),
    torch.float16: ("F16", "<f2"),
    torch.bfloat16: ("BF16", "<i2"),  # numpy has no bfloat16: move the bits as int16
    torch.float64: ("F64", "<f8"),
    torch.int64: ("I64", "<i8"),
    torch.int32: ("I32", "<i4"),
    torch.int16: ("I16", "<i2"),
    torch.int8: ("I8", "i1"),
    torch.uint8: ("U8", "u1"),
    torch.bool: ("BOOL", "u1"),
}
_FROM_ST = {st: (dt, np_dt) for dt, (st, np_dt) in _TO_ST.items()}

_MAX_HEADER = 100 * 1000 * 1000


def _tensor_bytes(t):
    t = t.detach().to("cpu").contiguous()
    st, np_dt = _TO_ST[t.dtype]
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return st, t.numpy().astype(np_dt, copy=False).tobytes()


def serialize(tensors, metadata=None):
    """Return the safetensors encoding of `tensors` (dict name -> tensor) as bytes."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: not a tensor")
        if t.dtype not in _TO_ST:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        st, data = _tensor_bytes(t)
        header[name] = {"dtype": st, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def atomic_write(path, write_fn, binary=True):
    """Create `path` via a temp file in the same folder and a rename, so readers
    never see a partial file; write_fn(f) writes the content."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; use ordinary file permissions
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_file(tensors, path, metadata=None):
    """Write `tensors` to `path` atomically."""
    data = serialize(tensors, metadata)
    atomic_write(path, lambda f: f.write(data))


def deserialize(buf):
    """Parse safetensors bytes; returns (dict name -> tensor, metadata or None)."""
    if len(buf) < 8:
        raise ValueError("safetensors: file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > _MAX_HEADER or 8 + n > len(buf):
        raise ValueError(f"safetensors: bad header length {n}")
    header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"))
    metadata = header.pop("__metadata__", None)
    data = memoryview(buf)[8 + n:]
    out = {}
    end_max = 0
    for name, info in header.items():
        dt, np_dt = _FROM_ST[info["dtype"]]
        shape = [int(s) for s in info["shape"]]
        begin, end = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if end < begin or end > len(data) or end - begin != count * np.dtype(np_dt).itemsize:
            raise ValueError(f"safetensors: {name}: data_offsets {begin},{end} do not fit")
        end_max = max(end_max, end)
        arr = np.frombuffer(data[begin:end], dtype=np_dt, count=count).reshape(shape)
        t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        if dt == torch.bfloat16:
            t = t.view(torch.bfloat16)
        elif dt == torch.bool:
            t = t.to(torch.bool)
        out[name] = t
    if end_max != len(data):
        raise ValueError("safetensors: data section size does not match the header")
    return out, metadata


def load_file(path):
    """Read a safetensors file into an insertion-ordered dict name -> tensor."""
    with open(path, "rb") as f:
        tensors, _ = deserialize(f.read())
    return tensors


def load_metadata(path):
    with open(path, "rb") as f:
        _, metadata = deserialize(f.read())
    return metadata or {}


if __name__ == "__main__":
    # Print a file's table of contents: `safetensors_io.py FILE`.
    for p in sys.argv[1:]:
        print(p, load_metadata(p))
        for k, v in load_file(p).items():
            print(f"  {k}: {str(v.dtype).replace('torch.', '')} {list(v.shape)}")
