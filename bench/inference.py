#!/usr/bin/python3
"""Inference speed: Vitrine's engines against PyTorch fp32 eager, in one run.

Run with Debian's python3 (it has torch + torchvision) after building:
    bench/inference.py [--build build] [--threads 2] [--archs resnet50 vit_b_16]
                       [--batches 1 32] [--iters 3]
Measures first the machine's matrix-product peak (oneDNN, fp32 / bf16 / int8), then per
model and batch: PyTorch fp32 eager (for ResNets also channels-last, "NHWC", the layout
Vitrine's libtorch path runs them in), Vitrine's libtorch path (fp32, the reference, and bf16)
and its fused oneDNN path in fp32, bf16 and int8: img/s, ms per batch, the ratio to
eager, the achieved GFLOP/s and its share of the peak. Last, the top-1 agreement of bf16
with fp32 predictions on the photos under --images.
All sides use the same thread count, the same architecture and random inputs; each figure
is the mean of --iters timed runs after a warm-up.
Vitrine keeps freed heap memory for reuse (vitrine::keep_freed_memory); the
`pytorch-m eager fp32` row runs PyTorch in a child process with the same glibc malloc
settings (GLIBC_TUNABLES), so the gain that setting alone brings is visible.
The `onnxruntime fp32` row is ONNX Runtime (npm's onnxruntime-node, CPU) on the same
torchvision model exported to ONNX by torch.onnx, its graph optimisations all on. Install
it once with `(cd bench/onnxruntime && npm ci)`; without it the row says so.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torchvision

from malloc_peer import last_json_line, run_with_vitrine_malloc


def eager_img_per_s(arch, batch, iters, threads, channels_last=False):
    torch.set_num_threads(threads)
    model = getattr(torchvision.models, arch)().eval()
    x = torch.randn(batch, 3, 224, 224)
    if channels_last:  # PyTorch's advice for convolutions on CPU, as Vitrine runs ResNets
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        seconds = (time.perf_counter() - start) / iters
    return batch / seconds, 1000 * seconds


def eager_tuned_img_per_s(arch, batch, iters, threads):
    """eager_img_per_s in a child process with Vitrine's malloc settings."""
    r = run_with_vitrine_malloc(__file__, ["--eager-peer", arch, "--batches", batch,
                                           "--iters", iters, "--threads", threads])
    return r["img_per_s"], r["ms"]


ORT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnxruntime")


def onnxruntime_img_per_s(arch, batch, iters, threads):
    """ONNX Runtime on the torchvision model, exported for this batch size."""
    if not os.path.isdir(os.path.join(ORT_DIR, "node_modules", "onnxruntime-node")):
        raise RuntimeError("not installed: (cd bench/onnxruntime && npm ci)")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on ViT's shape checks
            torch.onnx.export(model, torch.randn(batch, 3, 224, 224), path, opset_version=14,
                              input_names=["image"], output_names=["logits"])
        del model
        proc = subprocess.run(["node", os.path.join(ORT_DIR, "peer.mjs"), path, str(batch),
                               str(iters), str(threads)], capture_output=True, text=True)
    r = last_json_line(proc)
    return r["img_per_s"], r["ms"]


# Multiply-adds per 224x224 image (torchvision's "GFLOPS" column counts these); the
# figures below count 2 operations per multiply-add.
GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
         "resnet152": 11.51, "vit_b_16": 17.56, "vit_b_32": 4.41, "vit_l_16": 61.55}


def bench_binary(build):
    return os.path.join(build, "bench", "vitrine_bench_inference")


def peak_gflops(build, threads):
    out = subprocess.run([bench_binary(build), "--peak", "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gflops"]


def vitrine_img_per_s(build, arch, batch, precision, engine, iters, threads):
    out = subprocess.run(
        [bench_binary(build), "--arch", arch, "--batch", str(batch), "--precision", precision,
         "--engine", engine, "--iters", str(iters), "--warmup", "1", "--threads", str(threads)],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["img_per_s"], r["ms_per_batch"]


def top1(build, model_dir, precision, images, threads):
    out = subprocess.run(
        [os.path.join(build, "vitrine"), "predict", "--model", model_dir, "--topk", "1",
         "--precision", precision, "--threads", str(threads)] + images,
        capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        r = json.loads(line)
        if "top" in r:
            result[r["image"]] = r["top"][0]["index"]
    return result


def agreement(build, arch, images, threads):
    """bf16 vs fp32 top-1 on real photos, with torchvision-initialised weights."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)()
        if arch.startswith("vit"):
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        weights = os.path.join(tmp, "w.pth")
        torch.save(model.state_dict(), weights)
        subprocess.run([os.path.join(build, "vitrine"), "import", "--from", "torchvision",
                        "--arch", arch, "--weights", weights, "--out", tmp + "/m"],
                       check=True, capture_output=True)
        a = top1(build, tmp + "/m", "fp32", images, threads)
        b = top1(build, tmp + "/m", "bf16", images, threads)
    same = sum(1 for k in a if b.get(k) == a[k])
    return same, len(a)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default="build")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--archs", nargs="+", default=["resnet50", "vit_b_16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--images", nargs="*", default=["examples/images", "build/testdata/images"])
    p.add_argument("--eager-peer", metavar="ARCH", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.eager_peer:  # the child process of eager_tuned_img_per_s
        ips, ms = eager_img_per_s(a.eager_peer, a.batches[0], a.iters, a.threads)
        print(json.dumps({"img_per_s": ips, "ms": ms}))
        return

    print(f"threads={a.threads} iters={a.iters} torch={torch.__version__}")
    peak = peak_gflops(a.build, a.threads)
    print("matrix-product peak (oneDNN, 2048^3): " +
          ", ".join(f"{p} {peak[p]:.0f} GFLOP/s" for p in ("fp32", "bf16", "int8")))
    print(f"{'arch':10} {'batch':>5} {'side':22} {'img/s':>8} {'ms/batch':>9} {'x eager':>8} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    for arch in a.archs:
        sides = [("libtorch", "fp32"), ("libtorch", "bf16"), ("fused", "fp32"), ("fused", "bf16"),
                 ("fused", "int8")]
        for batch in a.batches:
            e_ips, e_ms = eager_img_per_s(arch, batch, a.iters, a.threads)

            def row(name, ips, ms, precision):
                gflops = 2 * GMACS.get(arch, float("nan")) * ips
                print(f"{arch:10} {batch:5} {name:22} {ips:8.2f} {ms:9.1f} {ips / e_ips:8.2f} "
                      f"{gflops:8.0f} {100 * gflops / peak[precision]:7.0f}%")

            row("pytorch eager fp32", e_ips, e_ms, "fp32")
            if arch.startswith("resnet"):
                row("pytorch eager fp32 NHWC", *eager_img_per_s(arch, batch, a.iters, a.threads,
                                                                channels_last=True), "fp32")
            try:
                row("pytorch-m eager fp32", *eager_tuned_img_per_s(arch, batch, a.iters,
                                                                   a.threads), "fp32")
            except Exception as e:  # a peer that fails is a row, not the end of the table
                print(f"{arch:10} {batch:5} {'pytorch-m eager fp32':22} error: {e}")
            try:
                row("onnxruntime fp32", *onnxruntime_img_per_s(arch, batch, a.iters,
                                                               a.threads), "fp32")
            except Exception as e:
                print(f"{arch:10} {batch:5} {'onnxruntime fp32':22} {e}")
            for engine, precision in sides:
                ips, ms = vitrine_img_per_s(a.build, arch, batch, precision, engine, a.iters,
                                            a.threads)
                row(f"vitrine {engine} {precision}", ips, ms, precision)
            sys.stdout.flush()
    images = [i for i in a.images if os.path.exists(i)]
    if images:
        for arch in a.archs:
            same, n = agreement(a.build, arch, images, a.threads)
            print(f"{arch}: bf16 top-1 equals fp32 top-1 on {same}/{n} images "
                  f"({100.0 * same / max(n, 1):.1f}%)")


if __name__ == "__main__":
    main()
