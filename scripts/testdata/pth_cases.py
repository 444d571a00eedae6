"""Writes torch.save checkpoints exercising vitrine::pth_load, with expected tensors.

Run with an interpreter that has torch (Debian: /usr/bin/python3):
    /usr/bin/python3 scripts/testdata/pth_cases.py OUT_DIR

Each good case NAME.pth comes with NAME.expected/ holding the tensors the loader must
return, in order, readable without a checkpoint reader:
    index.tsv   one line per tensor: name <TAB> dtype <TAB> shape <TAB> file
                (dtype like "float32"; shape as comma-separated sizes, empty for 0-dim)
    NNNN.f64    the values in row-major order as float64 little-endian
"""

import os
import shutil
import sys

import torch
from torch import nn


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


class _Evil:
    """Pickles as a call to os.system: a loader that honours it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("echo pwned > '%s'" % self.marker,))


def _small_model():
    torch.manual_seed(1234)
    model = _Small()
    # One training step so the BatchNorm buffers and the optimizer state are not trivial.
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 4, 4)
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return model, opt


def _write_expected(out_dir, name, tensors):
    folder = os.path.join(out_dir, name + ".expected")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    lines = []
    for i, (key, t) in enumerate(tensors.items()):
        file = "%04d.f64" % i
        data = t.detach().to(torch.float64).contiguous().numpy().astype("<f8").tobytes()
        with open(os.path.join(folder, file), "wb") as f:
            f.write(data)
        dtype = str(t.dtype).replace("torch.", "")
        shape = ",".join(str(s) for s in t.shape)
        assert "\t" not in key and "\n" not in key
        lines.append("%s\t%s\t%s\t%s\n" % (key, dtype, shape, file))
    with open(os.path.join(folder, "index.tsv"), "w") as f:
        f.writelines(lines)


def _good(out_dir, name, obj, expected, **save_kwargs):
    torch.save(obj, os.path.join(out_dir, name + ".pth"), **save_kwargs)
    _write_expected(out_dir, name, expected)


def write(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    pwned = os.path.join(out_dir, "pwned")
    if os.path.exists(pwned):
        os.remove(pwned)

    model, opt = _small_model()
    sd = model.state_dict()
    _good(out_dir, "small", sd, sd)

    half = _small_model()[0].half().state_dict()
    _good(out_dir, "half", half, half)
    bf16 = _small_model()[0].to(torch.bfloat16).state_dict()
    _good(out_dir, "bfloat16", bf16, bf16)

    # Views share their base's storage in the file: offsets, transposes, gaps, 0-dim.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.5 - 3.0
    views = {
        "base": base,
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "column": base[:, 4],
        "strided": base[::2, ::3],
        "element": base[3, 5],
        "empty": torch.zeros(0, 3),
    }
    _good(out_dir, "views", views, views)

    torch.manual_seed(99)
    dtypes = {
        "f32": torch.randn(3, 2),
        "f64": torch.randn(2, 3, dtype=torch.float64),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.tensor([-(2**40), -1, 0, 7, 2**40]),
        "i32": torch.tensor([[-(2**31), 2**31 - 1], [0, 3]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 5], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, -3], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "scalar": torch.tensor(2.5),
    }
    _good(out_dir, "dtypes", dtypes, dtypes)

    # Newer pickle protocols (frames, memoize, stack globals) as torch.save(pickle_protocol=).
    _good(out_dir, "protocol5", sd, sd, pickle_protocol=5)

    # Parameters, and a tensor carrying a Python attribute (which the loader may drop).
    tagged = torch.linspace(-1.0, 1.0, 5)
    tagged.note = "calibrated"
    params = {"weight": nn.Parameter(torch.arange(6.0).reshape(2, 3)), "tagged": tagged}
    _good(out_dir, "params", params, params)

    wrapped = {"epoch": 3, "arch": "small", "model": sd, "optimizer": opt.state_dict()}
    _good(out_dir, "wrapped", wrapped, sd)
    # As torchvision's references/classification/train.py and timm's CheckpointSaver save
    # them: the run's argparse.Namespace and other objects beside the weights.
    import argparse
    import numpy as np
    args = argparse.Namespace(lr=0.1, model="resnet50", epochs=[1, 2], nested={"a": (1, 2)})
    reference = {"model": sd, "optimizer": opt.state_dict(), "lr_scheduler": {"last_epoch": 3},
                 "epoch": 3, "args": args, "best": np.float64(0.75),
                 "shape": np.zeros((2, 2), dtype=np.float32)}
    _good(out_dir, "training_args", reference, sd)
    timm_style = {"epoch": 3, "arch": "small", "state_dict": sd, "args": args, "version": 2,
                  "metric": 0.5}
    _good(out_dir, "timm_saver", timm_style, sd)
    # An object where a tensor should be is still refused, by its class's name.
    torch.save({"fc.weight": sd["fc.weight"], "fc.bias": args},
               os.path.join(out_dir, "object_in_state_dict.pth"))

    prefixed = {"module." + k: v for k, v in sd.items()}
    _good(out_dir, "prefixed", prefixed, sd)

    torch.save(sd, os.path.join(out_dir, "legacy.pth"), _use_new_zipfile_serialization=False)

    torch.save(_Evil(pwned), os.path.join(out_dir, "evil.pth"))
    # Also hidden behind real tensors, so it is reached only after some were loaded.
    torch.save({"fc.weight": sd["fc.weight"], "payload": _Evil(pwned)},
               os.path.join(out_dir, "evil_nested.pth"))

    with open(os.path.join(out_dir, "small.pth"), "rb") as f:
        data = f.read()
    with open(os.path.join(out_dir, "truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])

    with open(os.path.join(out_dir, "not_a_checkpoint.pth"), "w") as f:
        f.write("this is a text file, not a checkpoint\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: %s OUT_DIR" % sys.argv[0])
    write(sys.argv[1])
