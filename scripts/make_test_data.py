#!/usr/bin/python3
"""Generate the reference data used by the C++ golden and integration tests.

Usage: /usr/bin/python3 scripts/make_test_data.py OUT_DIR [--force] [--self-check]

Writes OUT_DIR/models (golden_models.py), OUT_DIR/images (images.py),
OUT_DIR/pth (pth_cases.py, when present), OUT_DIR/train (train_steps.py) and finally
OUT_DIR/manifest.json.
Needs Debian's python3-torch and python3-torchvision, which live with
/usr/bin/python3 rather than with any other python3 on PATH.
"""

import argparse
import importlib
import inspect
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "testdata")


def _require_torch():
    try:
        import torch
        import torchvision
        for name in ("numpy", "PIL"):
            importlib.import_module(name)
    except ImportError as e:
        sys.exit(f"make_test_data: {sys.executable} cannot import {e.name}; "
                 "install python3-torch python3-torchvision: scripts/setup.sh does this "
                 "(run this script with /usr/bin/python3)")
    return torch, torchvision


def _call(fn, out_dir, force):
    # Pass --force on to parts that accept it.
    if "force" in inspect.signature(fn).parameters:
        return fn(out_dir, force=force)
    return fn(out_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--force", action="store_true", help="rebuild model outputs that already exist")
    ap.add_argument("--self-check", action="store_true",
                    help="reload the exported model files through the reverse renaming and compare")
    args = ap.parse_args(argv)

    torch, torchvision = _require_torch()
    torch.set_num_threads(2)
    sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
    sys.path.insert(0, TESTDATA)
    import golden_models
    import images

    parts = [("models", golden_models.write), ("images", images.write)]
    if os.path.isfile(os.path.join(TESTDATA, "pth_cases.py")):
        import pth_cases
        parts.append(("pth", pth_cases.write))
    import train_steps
    parts.append(("train", train_steps.write))

    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    for name, fn in parts:
        t0 = time.time()
        summary = _call(fn, os.path.join(out_dir, name), args.force)
        detail = f" ({summary})" if isinstance(summary, str) and summary else ""
        print(f"{name}: {time.time() - t0:.1f}s{detail}", flush=True)

    if args.self_check:
        t0 = time.time()
        ok = golden_models.self_check(os.path.join(out_dir, "models"))
        print(f"self-check: {time.time() - t0:.1f}s {'passed' if ok else 'FAILED'}", flush=True)
        if not ok:
            return 1

    manifest = {"parts": [name for name, _ in parts], "torch": torch.__version__,
                "torchvision": torchvision.__version__}
    import safetensors_io
    safetensors_io.atomic_write(os.path.join(out_dir, "manifest.json"),
                                lambda f: f.write(json.dumps(manifest, indent=2) + "\n"), binary=False)
    print(f"total: {time.time() - start:.1f}s -> {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
