#!/usr/bin/python3
"""Training speed: Vitrine against PyTorch eager, fp32 and bf16 autocast, in one run.

Run with Debian's python3 (it has torch + torchvision) after building:
    bench/train_speed.py [--build build] [--binary PATH] [--threads 2]
                         [--archs resnet18 vit_ti_16] [--precisions fp32 bf16]
                         [--batch 64] [--iters 3] [--warmup 1]
A step is what a trainer does per batch: forward in train mode, cross-entropy with label
smoothing 0.1, zero_grad, backward and an AdamW step (lr 1e-3, weight decay 0.05), on
random images and targets. bf16 is CPU autocast around the forward pass and the loss on
both sides, with fp32 weights and optimiser state. Both sides use the same thread count,
architecture, image size and batch, measured one after the other for each pair of rows.
img/s and ms/step are the mean of --iters timed steps after --warmup untimed ones; the
ratio compares each side's fastest step, which other work on a shared machine disturbs
least. Vitrine trains ResNets in channels-last layout; for them the table also has PyTorch
in that layout (`model.to(memory_format=torch.channels_last)`, PyTorch's advice for CPU
training), so the ratio against PyTorch's default and against its best layout are both there.
Vitrine also keeps freed heap memory for reuse (vitrine::keep_freed_memory); the
`pytorch-m` row runs PyTorch in a child process with the same glibc malloc settings
(GLIBC_TUNABLES), and for ResNets in channels-last layout as well: PyTorch given both of
Vitrine's settings. The last column compares Vitrine with the fastest PyTorch row.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from malloc_peer import run_with_vitrine_malloc

NUM_CLASSES = 10
LABEL_SMOOTHING = 0.1

# arch -> (image size, torchvision model of the same shape)
PEERS = {
    "resnet18": (64, lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES)),
    "vit_ti_16": (224, lambda: VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192,
        mlp_dim=768, num_classes=NUM_CLASSES)),
}


def pytorch_step_seconds(arch, batch, precision, iters, warmup, threads, channels_last=False):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size, make = PEERS[arch]
    model = make().train()
    # torchvision keeps weight decay on every parameter, where Vitrine spares biases, norms
    # and embeddings; the cost of an AdamW step does not depend on the decay values.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(NUM_CLASSES, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sum(times) / iters, min(times)


def pytorch_tuned_step_seconds(arch, batch, precision, iters, warmup, threads):
    """PyTorch with Vitrine's malloc settings (and layout): (mean, best) seconds a step."""
    r = run_with_vitrine_malloc(__file__, ["--peer", arch, precision, "--batch", batch,
                                           "--iters", iters, "--warmup", warmup,
                                           "--threads", threads])
    return r["mean"], r["best"]


def vitrine_result(binary, arch, batch, precision, iters, warmup, threads):
    """The benchmark's JSON line; a crash or a missing line becomes {"error": ...}."""
    size = PEERS[arch][0]
    proc = subprocess.run(
        [binary, "--arch", arch, "--image-size", str(size), "--batch", str(batch),
         "--precision", precision, "--iters", str(iters), "--warmup", str(warmup),
         "--threads", str(threads)],
        capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    if proc.returncode < 0:
        why = f"crashed with {signal.Signals(-proc.returncode).name}"
    else:
        why = f"exited with {proc.returncode}"
    tail = proc.stderr.strip().splitlines()[-1:] or [""]
    return {"error": f"{why} {tail[0]}".strip()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default="build")
    p.add_argument("--binary", help="default: <build>/bench/vitrine_bench_train")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--archs", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peer", nargs=2, metavar=("ARCH", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer:  # the child process of pytorch_tuned_step_seconds
        arch, precision = a.peer
        mean, best = pytorch_step_seconds(arch, a.batch, precision, a.iters, a.warmup,
                                          a.threads, channels_last=arch.startswith("resnet"))
        print(json.dumps({"mean": mean, "best": best}))
        return
    binary = a.binary or os.path.join(a.build, "bench", "vitrine_bench_train")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not built; build the vitrine_bench_train target or pass --binary")

    print(f"threads={a.threads} batch={a.batch} iters={a.iters} warmup={a.warmup} "
          f"torch={torch.__version__} torchvision={torchvision.__version__}")
    print(f"{'arch':10} {'size':>4} {'side':14} {'img/s':>8} {'ms/step':>9} {'best ms':>9} "
          f"{'x pytorch':>9} {'x best':>6}")
    for arch in a.archs:
        size = PEERS[arch][0]
        for precision in a.precisions:
            head = f"{arch:10} {size:4}"
            p_best_ms = None
            fastest_ms = None
            peers = (["pytorch", "pytorch-cl"] if arch.startswith("resnet") else ["pytorch"])
            for peer in peers + ["pytorch-m"]:
                side = f"{peer} {precision}"
                try:
                    if peer == "pytorch-m":
                        mean, best = pytorch_tuned_step_seconds(arch, a.batch, precision,
                                                                a.iters, a.warmup, a.threads)
                    else:
                        mean, best = pytorch_step_seconds(arch, a.batch, precision, a.iters,
                                                          a.warmup, a.threads,
                                                          peer == "pytorch-cl")
                    if peer == "pytorch":
                        p_best_ms = 1000 * best
                    fastest_ms = min(fastest_ms or 1e30, 1000 * best)
                    ratio = f"{p_best_ms / (1000 * best):9.2f}" if p_best_ms else f"{'-':>9}"
                    print(f"{head} {side:14} {a.batch / mean:8.2f} {1000 * mean:9.1f} "
                          f"{1000 * best:9.1f} {ratio}")
                except Exception as e:  # a peer that fails is a row, not the end of the table
                    print(f"{head} {side:14} error: {e}")
                sys.stdout.flush()
            r = vitrine_result(binary, arch, a.batch, precision, a.iters, a.warmup, a.threads)
            if "error" in r:
                print(f"{head} {'vitrine ' + precision:14} error: {r['error']}")
            else:
                best_ms = r["best_ms_per_step"]
                ratio = f"{p_best_ms / best_ms:9.2f}" if p_best_ms else f"{'-':>9}"
                vs_best = f"{fastest_ms / best_ms:6.2f}" if fastest_ms else f"{'-':>6}"
                print(f"{head} {'vitrine ' + precision:14} {r['img_per_s']:8.2f} "
                      f"{r['ms_per_step']:9.1f} {best_ms:9.1f} {ratio} {vs_best}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
