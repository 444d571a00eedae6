"""Reference images for the C++ decoding, preprocessing and CLI tests.

write(out_dir) creates:
  preprocess/  photo-like JPEG/PNG files, index.json, and ref.safetensors with
               torchvision's eval-transform output per file (<file>, F32 3x224x224),
               the 224x224 crop before ToTensor (<file>:crop, U8 HxWx3) and the
               decoded pixels (<file>:rgb, U8 HxWx3)
  bad/         inputs that `vitrine predict` must accept or reject cleanly,
               expected.json, and rgb.safetensors with PIL's decoded pixels
               (after EXIF orientation; 16-bit files as "<file>:8bit")
  sample/      four small product-like JPEGs for demos
write_examples(dir) writes the small images kept in the repository under
examples/images/ (run `images.py --examples examples/images`).

Usage: images.py OUT_DIR | images.py --examples DIR
"""

import argparse
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
EVAL_TRANSFORM = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
CROP_ONLY = T.Compose([T.Resize(256), T.CenterCrop(224)])

EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- file output

def _write_bytes(path, data):
    safetensors_io.atomic_write(path, lambda f: f.write(data))


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _save(img, path, fmt, **kw):
    data = _encode(img, fmt, **kw)
    _write_bytes(path, data)
    return data


def _write_json(obj, path):
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


# ---------------------------------------------------------------- synthetic photos

def _blurred_mask(w, h, draw_fn, radius):
    mask = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(mask))
    if radius > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def _gradient(rng, w, h, lo=30, hi=225):
    c = rng.uniform(lo, hi, size=(2, 2, 3)).astype(np.float32)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    return (1 - y) * ((1 - x) * c[0, 0] + x * c[0, 1]) + y * ((1 - x) * c[1, 0] + x * c[1, 1])


def _grain(rng, w, h, sigma):
    """Mildly correlated sensor-like noise (not white), so JPEG sizes stay realistic."""
    n = rng.normal(0.0, sigma, size=(h, w, 3)).astype(np.float32)
    return n + 0.5 * np.roll(n, 1, axis=1)


def photo(seed, w, h):
    """A photo-like RGB image: smooth gradient, a few soft shapes, mild grain."""
    rng = np.random.default_rng(seed)
    img = _gradient(rng, w, h)
    s = min(w, h)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.08, 0.35) * s, rng.uniform(0.08, 0.35) * s
        kind = int(rng.integers(0, 3))
        if kind == 0:
            fn = lambda d, b=(cx - rx, cy - ry, cx + rx, cy + ry): d.ellipse(b, fill=255)  # noqa: E731
        elif kind == 1:
            fn = lambda d, b=(cx - rx, cy - ry, cx + rx, cy + ry): d.rectangle(b, fill=255)  # noqa: E731
        else:
            pts = [(cx + rx * np.cos(a), cy + ry * np.sin(a))
                   for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
            fn = lambda d, p=pts: d.polygon(p, fill=255)  # noqa: E731
        mask = _blurred_mask(w, h, fn, rng.uniform(0.5, 0.03 * s + 1))
        color = rng.uniform(0, 255, 3).astype(np.float32)
        shade = 0.75 + 0.5 * _gradient(rng, w, h, 0, 1)  # lighting across the shape
        img = img * (1 - 0.9 * mask) + 0.9 * mask * np.clip(color * shade, 0, 255)
    img += _grain(rng, w, h, 2.5)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def _product(seed, w, h, kind, grain=1.5):
    """A product shot: one object with a soft shadow on a light backdrop."""
    rng = np.random.default_rng(seed)
    img = _gradient(rng, w, h, 215, 250)
    cx, cy, s = w / 2, h / 2, min(w, h)
    color = rng.uniform(30, 200, 3).astype(np.float32)
    accent = None  # a darker detail drawn over the object
    if kind == "bag":
        body = [(cx - 0.32 * s, cy - 0.05 * s), (cx + 0.32 * s, cy - 0.05 * s),
                (cx + 0.38 * s, cy + 0.38 * s), (cx - 0.38 * s, cy + 0.38 * s)]
        parts = [lambda d: d.polygon(body, fill=255),
                 lambda d: d.arc((cx - 0.2 * s, cy - 0.35 * s, cx + 0.2 * s, cy + 0.1 * s),
                                 180, 360, fill=255, width=max(2, int(0.04 * s)))]
    elif kind == "shoe":
        sole = [(cx - 0.42 * s, cy + 0.12 * s), (cx + 0.45 * s, cy + 0.12 * s),
                (cx + 0.45 * s, cy + 0.2 * s), (cx - 0.42 * s, cy + 0.2 * s)]
        upper = [(cx - 0.42 * s, cy + 0.12 * s), (cx - 0.38 * s, cy - 0.25 * s),
                 (cx - 0.12 * s, cy - 0.25 * s), (cx - 0.05 * s, cy - 0.08 * s),
                 (cx + 0.3 * s, cy - 0.02 * s), (cx + 0.45 * s, cy + 0.12 * s)]
        parts = [lambda d: d.polygon(upper, fill=255), lambda d: d.polygon(sole, fill=255)]
        accent = lambda d: d.polygon(sole, fill=255)  # noqa: E731
    elif kind == "shirt":
        pts = [(cx - 0.15 * s, cy - 0.4 * s), (cx + 0.15 * s, cy - 0.4 * s),
               (cx + 0.45 * s, cy - 0.22 * s), (cx + 0.36 * s, cy - 0.05 * s),
               (cx + 0.25 * s, cy - 0.12 * s), (cx + 0.25 * s, cy + 0.42 * s),
               (cx - 0.25 * s, cy + 0.42 * s), (cx - 0.25 * s, cy - 0.12 * s),
               (cx - 0.36 * s, cy - 0.05 * s), (cx - 0.45 * s, cy - 0.22 * s)]
        parts = [lambda d: d.polygon(pts, fill=255)]
    elif kind == "bottle":
        parts = [lambda d: d.rounded_rectangle((cx - 0.14 * s, cy - 0.15 * s, cx + 0.14 * s, cy + 0.42 * s),
                                               radius=int(0.05 * s), fill=255),
                 lambda d: d.rectangle((cx - 0.05 * s, cy - 0.4 * s, cx + 0.05 * s, cy - 0.1 * s), fill=255)]
    else:
        raise ValueError(kind)

    def draw_all(d):
        for p in parts:
            p(d)

    shadow = np.roll(_blurred_mask(w, h, draw_all, 0.04 * s), (int(0.03 * s), int(0.02 * s)), (0, 1))
    img = img * (1 - 0.35 * shadow)
    mask = _blurred_mask(w, h, draw_all, 1.0)
    shade = 0.7 + 0.6 * _gradient(rng, w, h, 0, 1)
    img = img * (1 - mask) + mask * np.clip(color * shade, 0, 255)
    if accent is not None:
        mask = _blurred_mask(w, h, accent, 1.0)
        img = img * (1 - mask) + mask * (0.35 * color)
    if grain:
        img += _grain(rng, w, h, grain)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def _rgb(img):
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))


def _exif(orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def _stored_for_orientation_6(displayed):
    # Orientation 6: a viewer rotates the stored pixels 90 degrees clockwise.
    return displayed.transpose(Image.Transpose.ROTATE_90)


# ---------------------------------------------------------------- hand-built files

def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_16bit_rgb(arr16):
    """PNG bytes for an HxWx3 uint16 array (PIL cannot write 16-bit RGB)."""
    h, w, _ = arr16.shape
    rows = arr16.astype(">u2").reshape(h, w * 6 // 2).view(np.uint8).reshape(h, w * 6)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
            _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))


def png_claiming(width, height):
    """A well-formed PNG header claiming width x height RGB with a one-row IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    first_row = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
            _png_chunk(b"IDAT", first_row) + _png_chunk(b"IEND", b""))


def jpeg_claiming(jpeg, width, height):
    """Rewrite the SOF0 frame size of a baseline JPEG (walks the marker segments)."""
    data = bytearray(jpeg)
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("not at a JPEG marker")
        marker = data[i + 1]
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xC0:
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        if marker == 0xDA:
            break
        i += 2 + seg_len
    raise ValueError("no SOF0 segment: not a baseline JPEG")


def grey_icc_profile():
    """A minimal valid ICC v2.1 monochrome display profile (gamma 2.2 kTRC)."""
    def s15(x):
        return struct.pack(">i", int(round(x * 65536)))

    desc_text = b"Vitrine Grey Gamma 2.2\x00"
    tags = [
        (b"desc", b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text +
         struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67),
        (b"cprt", b"text" + b"\0" * 4 + b"No copyright, use freely\x00"),
        (b"wtpt", b"XYZ " + b"\0" * 4 + s15(0.9642) + s15(1.0) + s15(0.8249)),
        (b"kTRC", b"curv" + b"\0" * 4 + struct.pack(">IH", 1, int(round(2.2 * 256))) + b"\0\0"),
    ]
    table_len = 4 + 12 * len(tags)
    offset = 128 + table_len
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = 128 + table_len + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) +
              b"mntrGRAYXYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" +
              b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0) +
              s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + table + body


# ---------------------------------------------------------------- parts

PREPROCESS_SIZES = [(640, 480), (480, 640), (300, 500), (1024, 768), (257, 256), (180, 120)]
RGBA_SIZE = (300, 500)


def write_preprocess(d):
    files = []
    for i, (w, h) in enumerate(PREPROCESS_SIZES):
        img = photo(100 + i, w, h)
        stem = f"photo_{w}x{h}"
        _save(img, os.path.join(d, stem + ".jpg"), "JPEG", quality=90)
        files += [(stem + ".jpg", "jpeg", "RGB"), (stem + ".png", "png", "RGB")]
        _save(img, os.path.join(d, stem + ".png"), "PNG")
        if (w, h) == RGBA_SIZE:
            rgba = img.copy()
            rgba.putalpha(255)
            _save(rgba, os.path.join(d, stem + "_rgba.png"), "PNG")
            files.append((stem + "_rgba.png", "png", "RGBA"))

    tensors, index = {}, []
    for name, fmt, mode in files:
        with Image.open(os.path.join(d, name)) as f:
            assert f.mode == mode, (name, f.mode)
            img = f.convert("RGB")
        tensors[name] = EVAL_TRANSFORM(img).contiguous()
        tensors[name + ":crop"] = _rgb(CROP_ONLY(img))
        tensors[name + ":rgb"] = _rgb(img)
        index.append({"file": name, "format": fmt, "mode": mode,
                      "width": img.width, "height": img.height})
    safetensors_io.save_file(tensors, os.path.join(d, "ref.safetensors"),
                             {"transform": "Resize(256) CenterCrop(224) ToTensor Normalize"})
    _write_json({"files": index,
                 "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear (PIL, antialiased)",
                               "mean": MEAN, "std": STD},
                 "keys": {"<file>": "F32 [3,224,224] normalised CHW",
                          "<file>:crop": "U8 [224,224,3] after Resize+CenterCrop",
                          "<file>:rgb": "U8 [H,W,3] decoded pixels"}},
                os.path.join(d, "index.json"))
    return len(files)


def write_bad(d):
    expected, rgb = {}, {}

    def ok(name, img, note=None, reference=True):
        """Record an accepted file; `img` is what PIL decodes (before EXIF)."""
        shown = ImageOps.exif_transpose(img)
        entry = {"ok": True, "width": shown.width, "height": shown.height}
        if note:
            entry["note"] = note
        expected[name] = entry
        if reference:
            rgb[name] = _rgb(shown)

    def bad(name, why):
        expected[name] = {"ok": False, "why": why}

    def reopen(name):
        with Image.open(os.path.join(d, name)) as f:
            f.load()
            return f.copy()

    base = photo(200, 400, 300)
    jpeg = _save(base, os.path.join(d, "ok1.jpg"), "JPEG", quality=90)
    ok("ok1.jpg", reopen("ok1.jpg"))
    _save(photo(201, 320, 240), os.path.join(d, "ok2.png"), "PNG")
    ok("ok2.png", reopen("ok2.png"))

    _write_bytes(os.path.join(d, "truncated.jpg"), jpeg[: int(len(jpeg) * 0.6)])
    bad("truncated.jpg", "truncated JPEG: data ends at 60% without an EOI marker")
    _write_bytes(os.path.join(d, "empty.jpg"), b"")
    bad("empty.jpg", "empty file")
    _save(photo(202, 256, 192), os.path.join(d, "png_named.jpg"), "PNG")
    ok("png_named.jpg", reopen("png_named.jpg"), "PNG content with a .jpg name")
    _write_bytes(os.path.join(d, "text.png"), b"This is not an image, just text named .png\n" * 4)
    bad("text.png", "not an image (plain text)")

    # 16-bit files hold v8 * 257, so any sane 16->8 bit conversion (>>8, /257,
    # *255/65535 rounded) gives back v8 exactly: stored as "<file>:8bit".
    v8 = np.array(photo(203, 320, 240))
    _write_bytes(os.path.join(d, "deep16.png"), png_16bit_rgb(v8.astype(np.uint16) * 257))
    ok("deep16.png", reopen("deep16.png"), "16-bit RGB PNG", reference=False)
    rgb["deep16.png:8bit"] = torch.from_numpy(v8)
    g8 = np.array(photo(204, 240, 180).convert("L"))
    _save(Image.fromarray(g8.astype(np.uint16) * 257, "I;16"), os.path.join(d, "grey16.png"), "PNG")
    ok("grey16.png", reopen("grey16.png"), "16-bit greyscale PNG", reference=False)
    rgb["grey16.png:8bit"] = torch.from_numpy(np.repeat(g8[..., None], 3, axis=2))

    _save(photo(205, 300, 220).convert("CMYK"), os.path.join(d, "cmyk.jpg"), "JPEG", quality=90)
    ok("cmyk.jpg", reopen("cmyk.jpg"), "Adobe CMYK JPEG (K = 0, as PIL converts RGB)")
    inks = np.asarray(photo(212, 120, 90).convert("CMYK")).copy()
    inks[..., 3] = np.linspace(0, 200, inks.shape[1]).astype(np.uint8)[None, :]  # black ink too
    _save(_stored_for_orientation_6(Image.fromarray(inks, "CMYK")),
          os.path.join(d, "cmyk_rotated.jpg"), "JPEG", quality=90, exif=_exif(6))
    ok("cmyk_rotated.jpg", reopen("cmyk_rotated.jpg"),
       "Adobe CMYK JPEG with black ink (K > 0), stored 90x120, EXIF Orientation=6")
    _save(photo(206, 280, 210).convert("L"), os.path.join(d, "grey_icc.jpg"), "JPEG",
          quality=90, icc_profile=grey_icc_profile())
    ok("grey_icc.jpg", reopen("grey_icc.jpg"),
       "greyscale JPEG with an embedded grey ICC profile (reference ignores the profile)")

    _write_bytes(os.path.join(d, "huge.png"), png_claiming(50000, 50000))
    bad("huge.png", "IHDR claims 50000x50000 pixels (too large)")
    _write_bytes(os.path.join(d, "huge.jpg"),
                 jpeg_claiming(_encode(photo(207, 16, 16), "JPEG", quality=90), 50000, 50000))
    bad("huge.jpg", "SOF0 claims 50000x50000 pixels (too large)")

    upright = photo(208, 200, 300)
    _save(_stored_for_orientation_6(upright), os.path.join(d, "exif_rotated.jpg"), "JPEG",
          quality=90, exif=_exif(6))
    ok("exif_rotated.jpg", reopen("exif_rotated.jpg"), "stored 300x200, EXIF Orientation=6")

    _save(photo(209, 320, 240), os.path.join(d, "photo.webp"), "WEBP", quality=90)
    ok("photo.webp", reopen("photo.webp"), "lossy WebP")
    _save(photo(210, 250, 170), os.path.join(d, "photo.bmp"), "BMP")
    ok("photo.bmp", reopen("photo.bmp"), "24-bit BMP")

    frames = [photo(211 + k, 120, 90).convert("P", palette=Image.Palette.ADAPTIVE) for k in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    _write_bytes(os.path.join(d, "anim.gif"), buf.getvalue())
    bad("anim.gif", "GIF is not a supported format")

    expected = dict(sorted(expected.items()))
    _write_json(expected, os.path.join(d, "expected.json"))
    safetensors_io.save_file(rgb, os.path.join(d, "rgb.safetensors"))
    return len(expected)


SAMPLES = [("bag.jpg", "bag", 320, 320), ("shoe.jpg", "shoe", 400, 260),
           ("shirt.jpg", "shirt", 280, 360), ("bottle.jpg", "bottle", 240, 420)]


def write_sample(d):
    for i, (name, kind, w, h) in enumerate(SAMPLES):
        _save(_product(300 + i, w, h, kind), os.path.join(d, name), "JPEG", quality=90)
    return len(SAMPLES)


def write_examples(d):
    """The committed demo images: same subjects, one per format, one EXIF-rotated."""
    _save(_product(300, 320, 320, "bag"), os.path.join(d, "bag.jpg"), "JPEG", quality=88)
    # PNG keeps noise losslessly: no grain so the file stays small.
    _save(_product(301, 320, 208, "shoe", grain=0), os.path.join(d, "shoe.png"), "PNG", optimize=True)
    _save(_product(302, 280, 360, "shirt"), os.path.join(d, "shirt.webp"), "WEBP", quality=85)
    upright = _product(303, 240, 360, "bottle")
    _save(_stored_for_orientation_6(upright), os.path.join(d, "rotated.jpg"), "JPEG",
          quality=88, exif=_exif(6))
    return {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))}


def write(out_dir):
    """Write preprocess/, bad/ and sample/ under out_dir; returns a short summary."""
    n_pre = write_preprocess(os.path.join(out_dir, "preprocess"))
    n_bad = write_bad(os.path.join(out_dir, "bad"))
    n_sample = write_sample(os.path.join(out_dir, "sample"))
    return f"{n_pre} preprocess, {n_bad} bad-input, {n_sample} sample images"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--examples", metavar="DIR", help="write the repository's example images into DIR")
    args = ap.parse_args(argv)
    if not args.out_dir and not args.examples:
        ap.error("give OUT_DIR or --examples DIR")
    torch.set_num_threads(2)
    if args.examples:
        for name, size in write_examples(args.examples).items():
            print(f"{name}: {size} bytes")
    if args.out_dir:
        print(f"images: {write(args.out_dir)}")


if __name__ == "__main__":
    main()
