#!/usr/bin/python3
"""Write Fashion-MNIST (Debian's dataset-fashion-mnist IDX files) as ImageFolder trees of
PNG photos, optionally only some classes: for transfer experiments such as "pretrain on
five classes, fine-tune on the other five".

Usage: fashion_mnist_folders.py OUT_DIR [--classes 0,1,2] [--dir /usr/share/datasets/fashion-mnist]
Writes OUT_DIR/train/<label>/<index>.png and OUT_DIR/test/<label>/<index>.png.
"""

import argparse
import gzip
import os
import struct
import sys

import numpy as np
from PIL import Image

LABELS = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
          "Bag", "Ankle_boot"]


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    sys.exit(f"no {stem}[.gz] in {directory}: apt-get install dataset-fashion-mnist")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--dir", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    keep = {int(c) for c in args.classes.split(",")}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find(args.dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(args.dir, f"{prefix}-labels-idx1-ubyte"))
        for c in keep:
            os.makedirs(os.path.join(args.out_dir, split, LABELS[c]), exist_ok=True)
        for i, (img, c) in enumerate(zip(images, labels)):
            if int(c) in keep:
                Image.fromarray(img).save(os.path.join(args.out_dir, split, LABELS[c], f"{i}.png"))
    print(f"wrote classes {sorted(keep)} to {args.out_dir}")


if __name__ == "__main__":
    main()
