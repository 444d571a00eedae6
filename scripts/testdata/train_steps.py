"""Reference training runs for the C++ trainer's golden test.

For each model, writes into OUT_DIR/<name>/:
  init.safetensors     state_dict before training (torchvision names, BatchNorm buffers too)
  batches.safetensors  x0..x9 (8, 3, 32, 32) F32 and y0..y9 (8,) I64, one pair per step
  final.safetensors    state_dict after the 10 steps
  ref.json             hyper-parameters, parameter groups and, per step, the learning rate
                       used and the loss before the step (written last: marks the folder done)

The recipe, which the C++ trainer follows exactly:
  model.train() (BatchNorm normalises with batch statistics, running stats momentum 0.1);
  AdamW(betas=(0.9, 0.999), eps=1e-8), base lr 1e-3, two parameter groups: weight decay
  0.05 for weights, none for parameters with ndim <= 1 (biases, norm scales) or named
  class_token / encoder.pos_embedding;
  lr(t) = base * (t + 1) / warmup for t < warmup, else
  base * 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup))), set on every group first;
  loss = cross_entropy(logits, y, label_smoothing=0.1); zero_grad; backward; step.

The inputs are class prototypes plus noise, so the loss falls over the ten steps. Runs on
one thread: two runs write identical files.

How closely an independent float32 implementation can match (measured by scaling the
initial weights by 1 + 1e-7 * N(0, 1)):
  vit_tiny  every loss within 3e-7, final parameters within 1e-6, except the key third
            (rows 32..63) of each in_proj_bias: softmax ignores a shift shared by all keys,
            so its true gradient is 0 and Adam's normalised step follows rounding noise
            (differences up to 1e-3; bounded by the sum of learning rates, 6.1e-3).
  resnet18  small-batch BatchNorm makes the run chaotic: loss 0 within 1e-6, loss 1 within
            2e-4, later losses drift by up to ~5e-2; parameters by up to ~1e-2 (each Adam
            step moves a weight by about lr at most), BatchNorm running stats by up to ~0.2.
  Running the same libtorch ops on one thread can reproduce the run much more closely.

Usage: train_steps.py OUT_DIR
"""

import json
import math
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import vision_transformer as tv_vit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

NUM_CLASSES = 5
IMAGE_SIZE = 32
BATCH = 8
TOTAL_STEPS = 10
WARMUP_STEPS = 3
BASE_LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
BN_MOMENTUM = 0.1
NO_DECAY_NAMES = ("class_token", "encoder.pos_embedding")
DATA_SEED = 3100
PROTOTYPE_SCALE, NOISE_SCALE = 1.0, 0.5

TINY_VIT = dict(image_size=IMAGE_SIZE, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                mlp_dim=64, num_classes=NUM_CLASSES, dropout=0.0, attention_dropout=0.0)
MODELS = OrderedDict([
    ("resnet18", dict(seed=3018, arch="resnet18", config=dict(num_classes=NUM_CLASSES))),
    ("vit_tiny", dict(seed=3116, arch="vision_transformer", config=TINY_VIT)),
])


def build(name):
    spec = MODELS[name]
    torch.manual_seed(spec["seed"])
    if spec["arch"] == "resnet18":
        return torchvision.models.resnet18(weights=None, **spec["config"])
    model = tv_vit.VisionTransformer(**spec["config"])
    # torchvision zeroes the head, which would leave every logit equal at the first step.
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.02)
        model.heads.head.bias.normal_(0.0, 0.02)
    return model


def batches():
    """The ten (x, y) pairs; the same for every model."""
    g = torch.Generator().manual_seed(DATA_SEED)
    prototypes = torch.randn(NUM_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    out = []
    for _ in range(TOTAL_STEPS):
        y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g, dtype=torch.int64)
        x = PROTOTYPE_SCALE * prototypes[y] + NOISE_SCALE * torch.randn(
            BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        out.append((x.contiguous(), y))
    return out


def lr_at(step):
    """Linear warm-up to BASE_LR, then half a cosine down towards 0 at TOTAL_STEPS."""
    if step < WARMUP_STEPS:
        return BASE_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / (TOTAL_STEPS - WARMUP_STEPS)
    return 0.5 * BASE_LR * (1.0 + math.cos(math.pi * progress))


def param_groups(model):
    """(decay names, no-decay names) in named_parameters order."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in NO_DECAY_NAMES else decay).append(name)
    return decay, no_decay


def _state(model):
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())


def train(model, data):
    """Runs the recipe; returns the per-step records."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = BN_MOMENTUM
    params = dict(model.named_parameters())
    decay, no_decay = param_groups(model)
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
         {"params": [params[n] for n in no_decay], "weight_decay": 0.0}],
        lr=BASE_LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    model.train()
    steps = []
    for t, (x, y) in enumerate(data):
        lr = lr_at(t)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # float(loss) is the float32 loss exactly; JSON keeps every digit of it.
        steps.append({"step": t, "lr": lr, "loss": float(loss.item())})
    return steps


def write_model(name, d):
    data = batches()
    model = build(name)
    init = _state(model)
    decay, no_decay = param_groups(model)
    steps = train(model, data)
    meta = {"format": "pt", "model": name}
    safetensors_io.save_file(init, os.path.join(d, "init.safetensors"), meta)
    tensors = OrderedDict()
    for i, (x, _) in enumerate(data):
        tensors[f"x{i}"] = x
    for i, (_, y) in enumerate(data):
        tensors[f"y{i}"] = y
    safetensors_io.save_file(tensors, os.path.join(d, "batches.safetensors"))
    safetensors_io.save_file(_state(model), os.path.join(d, "final.safetensors"), meta)
    spec = MODELS[name]
    ref = {
        "model": name,
        "torchvision_builder": spec["arch"],
        "config": spec["config"],
        "seed": spec["seed"],
        "data_seed": DATA_SEED,
        "num_classes": NUM_CLASSES,
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "total_steps": TOTAL_STEPS,
        "warmup_steps": WARMUP_STEPS,
        "schedule": "linear warm-up then cosine to 0, set per step before the step",
        "optimizer": {"name": "adamw", "base_lr": BASE_LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "amsgrad": False},
        "label_smoothing": LABEL_SMOOTHING,
        "batchnorm_momentum": BN_MOMENTUM,
        "decay_params": decay,
        "no_decay_params": no_decay,
        "steps": steps,
        "threads": 1,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    safetensors_io.atomic_write(os.path.join(d, "ref.json"),
                                lambda f: f.write(json.dumps(ref, indent=2) + "\n"), binary=False)
    return steps


NT_XENT_SEED = 77
NT_XENT_TEMPERATURE = 0.2


def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent as the reference implementations write it."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def write_nt_xent(d):
    """Fixed projections (two views of 6 images, 16-d), the loss and its gradients."""
    g = torch.Generator().manual_seed(NT_XENT_SEED)
    z1 = torch.randn(6, 16, generator=g)
    z2 = z1 + 0.7 * torch.randn(6, 16, generator=g)  # partners resemble each other
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent(a, b, NT_XENT_TEMPERATURE)
    loss.backward()
    safetensors_io.save_file(
        {"z1": z1, "z2": z2, "loss": loss.detach().reshape(1), "grad_z1": a.grad,
         "grad_z2": b.grad, "temperature": torch.tensor([NT_XENT_TEMPERATURE])},
        os.path.join(d, "nt_xent.safetensors"), {"torch": torch.__version__})
    return float(loss)


MAE_SEED = 91
MAE_PATCH, MAE_MASK_RATIO = 4, 0.75


def mae_patchify(imgs, p):
    """MAE's patchify (models_mae.py): (N, 3, H, W) -> (N, L, p * p * 3)."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p ** 2 * 3)


def mae_loss(imgs, pred, mask, p):
    """MAE's forward_loss with norm_pix_loss: mask is 1 where a patch was hidden."""
    target = mae_patchify(imgs, p)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def write_mae(d):
    """Fixed images (3, 3, 16, 16: 16 patches of 4 x 4), predictions and MAE's random
    masking (the kept patches as MAE's random_masking draws them); the loss and its
    gradient with respect to the predictions."""
    g = torch.Generator().manual_seed(MAE_SEED)
    images = torch.randn(3, 3, 16, 16, generator=g)
    n, patches = 3, 16
    pred = torch.randn(n, patches, MAE_PATCH * MAE_PATCH * 3, generator=g)
    keep_count = int(patches * (1 - MAE_MASK_RATIO))
    noise = torch.rand(n, patches, generator=g)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = ids_shuffle[:, :keep_count]
    mask = torch.ones(n, patches)
    mask[:, :keep_count] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    p = pred.clone().requires_grad_()
    loss = mae_loss(images, p, mask, MAE_PATCH)
    loss.backward()
    safetensors_io.save_file(
        {"images": images, "pred": pred, "keep": keep.contiguous(),
         "patches": mae_patchify(images, MAE_PATCH).contiguous(),
         "loss": loss.detach().reshape(1), "grad_pred": p.grad,
         "patch": torch.tensor([MAE_PATCH])},
        os.path.join(d, "mae.safetensors"), {"torch": torch.__version__})
    return float(loss)


PGD_SEED = 4242
PGD_EPS, PGD_ALPHA, PGD_STEPS = 8 / 255, 2 / 255, 5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pgd(model, images, targets, eps, steps, alpha, start, mean, std):
    """L-inf PGD in pixel units behind normalised images, the steps in the order Vitrine's
    attack takes them (FGSM: one step of size eps from a zero start)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pixels = images.detach() * s + m
    lo, hi = pixels.clamp(max=0.0), pixels.clamp(min=1.0)
    delta = start.clamp(-eps, eps)
    delta = torch.minimum(torch.maximum(pixels + delta, lo), hi) - pixels
    for _ in range(steps):
        x = (pixels + delta).detach().requires_grad_(True)
        loss = F.cross_entropy(model((x - m) / s), targets)
        (grad,) = torch.autograd.grad(loss, [x])
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        delta = torch.minimum(torch.maximum(pixels + delta, lo), hi) - pixels
    return ((pixels + delta) - m) / s


def write_pgd(d):
    """resnet18 (train_steps' initial weights) in eval mode, 8 images of the first batch
    squashed into [0, 1] (many pixels near the ends, so the clamps act), a fixed random
    start; the PGD and FGSM images and the model's accuracy on each."""
    model = build("resnet18").eval()
    x, y = batches()[0]
    pixels = torch.sigmoid(3 * x)
    m = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    images = (pixels - m) / s
    g = torch.Generator().manual_seed(PGD_SEED)
    start = (torch.rand(images.shape, generator=g) * 2 - 1) * PGD_EPS
    adv = pgd(model, images, y, PGD_EPS, PGD_STEPS, PGD_ALPHA, start, IMAGENET_MEAN, IMAGENET_STD)
    fgsm = pgd(model, images, y, PGD_EPS, 1, PGD_EPS, torch.zeros_like(images), IMAGENET_MEAN,
               IMAGENET_STD)
    with torch.no_grad():
        losses = [float(F.cross_entropy(model(t), y)) for t in (images, fgsm, adv)]
    safetensors_io.save_file(
        {"images": images.contiguous(), "targets": y, "start": start, "pgd": adv.contiguous(),
         "fgsm": fgsm.contiguous(),
         "settings": torch.tensor([PGD_EPS, PGD_ALPHA, PGD_STEPS], dtype=torch.float64)},
        os.path.join(d, "pgd.safetensors"), {"torch": torch.__version__})
    return losses


def write(out_dir):
    """Write every model's folder under out_dir; returns a short summary."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split over threads would change the last bits
    try:
        done = []
        for name in MODELS:
            t0 = time.time()
            steps = write_model(name, os.path.join(out_dir, name))
            done.append(f"{name} loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f} "
                        f"{time.time() - t0:.1f}s")
        done.append(f"nt_xent {write_nt_xent(out_dir):.4f}")
        done.append(f"mae {write_mae(out_dir):.4f}")
        losses = write_pgd(out_dir)
        done.append("pgd loss " + " -> ".join(f"{v:.3f}" for v in losses))
        return ", ".join(done)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(write(sys.argv[1]))
