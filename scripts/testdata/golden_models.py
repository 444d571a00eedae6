"""Reference models and outputs for the C++ golden tests.

For each architecture, writes into OUT_DIR/<arch>/:
  weights.pth        torchvision state_dict (torch.save zip format)
  ref.safetensors    input, features, logits (F32), computed by torchvision in fp32
  timm.safetensors   the same weights under timm's names
and for vit_b_16 also hf/ (ViTForImageClassification) and hf_base/ (ViTModel).
vit_small_interp/ holds a small ViT trained at 64 px evaluated at 96 px through
torchvision's position-embedding interpolation. resnet18_stems/ holds grey 32 px
ResNet-18s with the small-photo stems (small: 3x3 stride-1 conv and the max-pool;
cifar: 3x3 stride-1 conv alone): <stem>.safetensors has their weights under
torchvision's names and <stem>_ref.safetensors input, features and logits.

Weights are random but every parameter that torchvision initialises to a
constant (zero heads, zero biases, unit norm scales, the class token) is
re-drawn, and BatchNorm running statistics are calibrated on random input: a
loader that swaps, drops or misnames any tensor then changes the outputs.

Usage: golden_models.py OUT_DIR [--force] [--self-check]
"""

import argparse
import json
import os
import re
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

BATCH = 4
IMAGE_SIZE = 224
SEEDS = {"resnet18": 1018, "resnet50": 1050, "vit_b_16": 1116, "vit_small_interp": 1200,
         "resnet18_stems": 1300}
STEMS = ("small", "cifar")
STEM_IMAGE_SIZE = 32
SMALL_VIT = dict(patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
SMALL_VIT_TRAINED, SMALL_VIT_EVAL = 64, 96


# ---------------------------------------------------------------- file output

_atomic_write = safetensors_io.atomic_write


def _save_pth(state_dict, path):
    # Saving through a file object names the archive's root folder "archive",
    # as a plain torch.save(sd, "x.pth") does, rather than after the temp file.
    _atomic_write(path, lambda f: torch.save(state_dict, f))


def _save_json(obj, path, **kw):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, **kw) + "\n"), binary=False)


# ---------------------------------------------------------------- models

def _randomise_constants(model):
    """Re-draw every parameter that starts out constant (zeros, ones) or nearly
    zero (torchvision's ViT MLP biases are N(0, 1e-6))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.reshape(-1)
            constant = flat.numel() == 1 or bool((flat == flat[0]).all())
            if not constant and float(flat.abs().max()) > 1e-4:
                continue
            if float(flat[0]) == 1.0:  # norm scale
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.02)


def _calibrate_batchnorm(model, size=112, batch=8):
    """Set BN running stats to the statistics of random input, so eval-mode
    activations stay O(1) and the stats are not the trivial (0, 1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def _build(arch, seed):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
    _randomise_constants(model)
    _calibrate_batchnorm(model)
    return model.eval()


def _head(model):
    return model.fc if isinstance(model, torchvision.models.ResNet) else model.heads.head


def run_model(model, x):
    """(features, logits) where features is the input of the final classifier."""
    captured = {}
    hook = _head(model).register_forward_hook(lambda m, inp, out: captured.update(f=inp[0]))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        hook.remove()
    return captured["f"].contiguous(), logits.contiguous()


# ---------------------------------------------------------------- renaming

_TV_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")

_TIMM_BLOCK = {
    "ln_1.": "norm1.",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.0.": "mlp.fc1.",
    "mlp.3.": "mlp.fc2.",
}
_TIMM_TOP = {
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "conv_proj.": "patch_embed.proj.",
    "encoder.ln.": "norm.",
    "heads.head.": "head.",
}

_HF_BLOCK = {
    "ln_1.": "layernorm_before.",
    "self_attention.out_proj.": "attention.output.dense.",
    "ln_2.": "layernorm_after.",
    "mlp.0.": "intermediate.dense.",
    "mlp.3.": "output.dense.",
}
_HF_TOP = {
    "class_token": "vit.embeddings.cls_token",
    "encoder.pos_embedding": "vit.embeddings.position_embeddings",
    "conv_proj.": "vit.embeddings.patch_embeddings.projection.",
    "encoder.ln.": "vit.layernorm.",
    "heads.head.": "classifier.",
}


def _swap_prefix(name, table):
    for old, new in table.items():
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old):]
    raise KeyError(f"no mapping for {name}")


def vit_to_timm(sd):
    out = OrderedDict()
    for k, v in sd.items():
        m = _TV_BLOCK.fullmatch(k)
        if m:
            out[f"blocks.{m.group(1)}." + _swap_prefix(m.group(2), _TIMM_BLOCK)] = v
        else:
            out[_swap_prefix(k, _TIMM_TOP)] = v
    return out


def vit_to_hf(sd):
    out = OrderedDict()
    for k, v in sd.items():
        m = _TV_BLOCK.fullmatch(k)
        if not m:
            out[_swap_prefix(k, _HF_TOP)] = v
            continue
        i, rest = m.groups()
        prefix = f"vit.encoder.layer.{i}."
        if rest.startswith("self_attention.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"{prefix}attention.attention.{part}.{kind}"] = t.contiguous()
        else:
            out[prefix + _swap_prefix(rest, _HF_BLOCK)] = v
    return out


def hf_base_from_hf(hf_sd, hidden, seed):
    """ViTModel layout: no 'vit.' prefix, no classifier, plus a (random) pooler."""
    out = OrderedDict((k[len("vit."):], v) for k, v in hf_sd.items() if k.startswith("vit."))
    g = torch.Generator().manual_seed(seed)
    out["pooler.dense.weight"] = torch.randn(hidden, hidden, generator=g) * 0.02
    out["pooler.dense.bias"] = torch.randn(hidden, generator=g) * 0.02
    return out


def hf_config(architecture, num_classes, hidden=768, layers=12, heads=12, mlp=3072,
              image_size=224, patch_size=16):
    cfg = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.0,
        "encoder_stride": patch_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": hidden,
        "image_size": image_size,
        "initializer_range": 0.02,
        "intermediate_size": mlp,
        "layer_norm_eps": 1e-06,
        "model_type": "vit",
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "patch_size": patch_size,
        "qkv_bias": True,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
    }
    if num_classes:
        cfg["id2label"] = {str(i): f"label_{i}" for i in range(num_classes)}
        cfg["label2id"] = {f"label_{i}": i for i in range(num_classes)}
    return cfg


# ---------------------------------------------------------------- writers

def _outputs(arch):
    if arch == "resnet18_stems":
        return [f"{stem}{suffix}.safetensors" for stem in STEMS for suffix in ("", "_ref")]
    files = ["weights.pth", "ref.safetensors"]
    if arch == "vit_small_interp":
        return files + ["meta.json"]
    files.append("timm.safetensors")
    if arch == "vit_b_16":
        files += ["hf/config.json", "hf/model.safetensors",
                  "hf_base/config.json", "hf_base/model.safetensors"]
    return files


def _write_arch(arch, d):
    model = _build(arch, SEEDS[arch])
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    features, logits = run_model(model, x)
    sd = model.state_dict()
    meta = {"arch": arch, "torch": torch.__version__, "torchvision": torchvision.__version__}

    _save_pth(sd, os.path.join(d, "weights.pth"))
    timm_sd = vit_to_timm(sd) if arch.startswith("vit") else sd  # timm ResNet = torchvision names
    safetensors_io.save_file(timm_sd, os.path.join(d, "timm.safetensors"), {"format": "pt"})
    if arch == "vit_b_16":
        hf_sd = vit_to_hf(sd)
        safetensors_io.save_file(hf_sd, os.path.join(d, "hf", "model.safetensors"), {"format": "pt"})
        _save_json(hf_config("ViTForImageClassification", 1000), os.path.join(d, "hf", "config.json"),
                   indent=2, sort_keys=True)
        base = hf_base_from_hf(hf_sd, 768, SEEDS[arch] + 1)
        safetensors_io.save_file(base, os.path.join(d, "hf_base", "model.safetensors"), {"format": "pt"})
        _save_json(hf_config("ViTModel", 0), os.path.join(d, "hf_base", "config.json"),
                   indent=2, sort_keys=True)
    # Written last: its presence marks the folder complete.
    safetensors_io.save_file({"input": x, "features": features, "logits": logits},
                             os.path.join(d, "ref.safetensors"), meta)


def _write_small_interp(d):
    torch.manual_seed(SEEDS["vit_small_interp"])
    trained = tv_vit.VisionTransformer(image_size=SMALL_VIT_TRAINED, **SMALL_VIT)
    _randomise_constants(trained)
    trained.eval()
    sd = trained.state_dict()
    _save_pth(sd, os.path.join(d, "weights.pth"))

    sd96 = tv_vit.interpolate_embeddings(SMALL_VIT_EVAL, SMALL_VIT["patch_size"], OrderedDict(sd))
    model = tv_vit.VisionTransformer(image_size=SMALL_VIT_EVAL, **SMALL_VIT)
    model.load_state_dict(sd96)
    model.eval()
    x = torch.randn(2, 3, SMALL_VIT_EVAL, SMALL_VIT_EVAL)
    features, logits = run_model(model, x)
    meta = {"trained_image_size": SMALL_VIT_TRAINED, "image_size": SMALL_VIT_EVAL, **SMALL_VIT}
    _save_json(meta, os.path.join(d, "meta.json"), indent=2)
    # Hugging Face's interpolate_pos_encoding and timm's resample_abs_pos_embed: bicubic
    # without aligned corners, timm antialiased; the class token kept.
    def resized(antialias, size):
        pos = sd["encoder.pos_embedding"]
        grid = pos[:, 1:]
        old = int(round(grid.shape[1] ** 0.5))
        grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic",
                                               align_corners=False, antialias=antialias)
        grid = grid.permute(0, 2, 3, 1).reshape(1, size * size, -1)
        return torch.cat([pos[:, :1], grid], dim=1).contiguous()

    grid96 = SMALL_VIT_EVAL // SMALL_VIT["patch_size"]
    safetensors_io.save_file(
        {"input": x, "features": features, "logits": logits,
         "pos_embedding": sd96["encoder.pos_embedding"].contiguous(),
         "pos_embedding_hf": resized(False, grid96), "pos_embedding_timm": resized(True, grid96),
         "pos_embedding_timm_small": resized(True, 2)},
        os.path.join(d, "ref.safetensors"),
        {"arch": "vit_small_interp", "torch": torch.__version__, "torchvision": torchvision.__version__})


def grad_cam(model, x, target):
    """Grad-CAM (Selvaraju et al. 2017) of class `target` for one image x (1, C, H, W), on
    ResNet's last stage: channels weighted by their mean gradient, ReLU, bilinear resize to
    the input, divided by the maximum."""
    saved = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: saved.__setitem__("a", o))
    with torch.enable_grad():
        logits = model(x)
        (g,) = torch.autograd.grad(logits[0, target], saved["a"])
    hook.remove()
    a = saved["a"].detach()
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear",
                                          align_corners=False)
    top = cam.max()
    return (cam / top if top > 0 else cam)[0, 0]


def _write_stems(d):
    for i, stem in enumerate(STEMS):
        torch.manual_seed(SEEDS["resnet18_stems"] + i)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        if stem == "cifar":
            model.maxpool = nn.Identity()
        _randomise_constants(model)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 1, STEM_IMAGE_SIZE, STEM_IMAGE_SIZE))
        model.eval()
        x = torch.randn(BATCH, 1, STEM_IMAGE_SIZE, STEM_IMAGE_SIZE)
        features, logits = run_model(model, x)
        target = int(logits[0].argmax())
        cam = grad_cam(model, x[:1], target)
        sd = OrderedDict((k, v.contiguous()) for k, v in model.state_dict().items())
        safetensors_io.save_file(sd, os.path.join(d, f"{stem}.safetensors"), {"format": "pt"})
        safetensors_io.save_file({"input": x, "features": features, "logits": logits,
                                  "gradcam": cam.contiguous(),
                                  "gradcam_target": torch.tensor([target])},
                                 os.path.join(d, f"{stem}_ref.safetensors"),
                                 {"arch": "resnet18", "stem": stem, "torch": torch.__version__})


ARCHS = ["resnet18", "resnet50", "vit_b_16", "vit_small_interp", "resnet18_stems"]


def write(out_dir, force=False, archs=None):
    """Write every architecture's folder under out_dir; returns a short summary."""
    done, cached = [], []
    for arch in archs or ARCHS:
        d = os.path.join(out_dir, arch)
        if not force and all(os.path.isfile(os.path.join(d, f)) for f in _outputs(arch)):
            cached.append(arch)
            continue
        t0 = time.time()
        if arch == "vit_small_interp":
            _write_small_interp(d)
        elif arch == "resnet18_stems":
            _write_stems(d)
        else:
            _write_arch(arch, d)
        done.append(f"{arch} {time.time() - t0:.1f}s")
    summary = ", ".join(done) if done else "nothing to do"
    if cached:
        summary += f" (cached: {' '.join(cached)})"
    return summary


# ---------------------------------------------------------------- self-check

def timm_to_vit(sd):
    inv_block = {v: k for k, v in _TIMM_BLOCK.items()}
    inv_top = {v: k for k, v in _TIMM_TOP.items()}
    out = OrderedDict()
    for k, v in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        if m:
            out[f"encoder.layers.encoder_layer_{m.group(1)}." + _swap_prefix(m.group(2), inv_block)] = v
        else:
            out[_swap_prefix(k, inv_top)] = v
    return out


def hf_to_vit(sd):
    inv_block = {v: k for k, v in _HF_BLOCK.items()}
    inv_top = {v: k for k, v in _HF_TOP.items()}
    out = OrderedDict()
    qkv = {}
    for k, v in sd.items():
        if not k.startswith(("vit.", "classifier.")):
            k = "vit." + k  # ViTModel layout
        m = re.fullmatch(r"vit\.encoder\.layer\.(\d+)\.(.+)", k)
        if not m:
            if not k.startswith("vit.pooler."):
                out[_swap_prefix(k, inv_top)] = v
            continue
        i, rest = m.groups()
        prefix = f"encoder.layers.encoder_layer_{i}."
        a = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if a:
            qkv.setdefault((i, a.group(2)), {})[a.group(1)] = v
            parts = qkv[(i, a.group(2))]
            if len(parts) == 3:
                out[f"{prefix}self_attention.in_proj_{a.group(2)}"] = torch.cat(
                    [parts["query"], parts["key"], parts["value"]], 0)
        else:
            out[prefix + _swap_prefix(rest, inv_block)] = v
    return out


def _manual_vit_hf(sd, cfg, x):
    """Straightforward ViT forward from HF-named weights (separate q, k, v; no
    fused kernels), the way a from-scratch implementation computes it."""
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    p = cfg["patch_size"]
    h = F.conv2d(x, sd["vit.embeddings.patch_embeddings.projection.weight"],
                 sd["vit.embeddings.patch_embeddings.projection.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2)
    cls = sd["vit.embeddings.cls_token"].expand(x.shape[0], -1, -1)
    h = torch.cat([cls, h], 1) + sd["vit.embeddings.position_embeddings"]
    B, N, C = h.shape
    for i in range(cfg["num_hidden_layers"]):
        L = lambda n: (sd[f"vit.encoder.layer.{i}.{n}.weight"], sd[f"vit.encoder.layer.{i}.{n}.bias"])  # noqa: E731
        y = F.layer_norm(h, (C,), *L("layernorm_before"), eps)
        q, k, v = (F.linear(y, *L(f"attention.attention.{n}")).view(B, N, heads, -1).transpose(1, 2)
                   for n in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(-1, -2) / (C // heads) ** 0.5, -1) @ v
        h = h + F.linear(a.transpose(1, 2).reshape(B, N, C), *L("attention.output.dense"))
        y = F.layer_norm(h, (C,), *L("layernorm_after"), eps)
        h = h + F.linear(F.gelu(F.linear(y, *L("intermediate.dense"))), *L("output.dense"))
    feat = F.layer_norm(h, (C,), sd["vit.layernorm.weight"], sd["vit.layernorm.bias"], eps)[:, 0]
    return feat, F.linear(feat, sd["classifier.weight"], sd["classifier.bias"])


def _fold_bn_resnet(model):
    """A copy of a ResNet with every BatchNorm folded into the preceding conv."""
    import copy
    m = copy.deepcopy(model)

    def fold(conv, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.data = conv.weight * scale.view(-1, 1, 1, 1)
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        return nn.Identity()

    with torch.no_grad():
        m.bn1 = fold(m.conv1, m.bn1)
        for block in m.modules():
            if isinstance(block, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)):
                for j in (1, 2, 3):
                    if hasattr(block, f"bn{j}"):
                        setattr(block, f"bn{j}", fold(getattr(block, f"conv{j}"), getattr(block, f"bn{j}")))
                if block.downsample is not None:
                    block.downsample[1] = fold(block.downsample[0], block.downsample[1])
    return m.eval()


def _diff(a, b):
    d = (a - b).abs()
    return f"max|d|={d.max().item():.3g} (max|ref|={b.abs().max().item():.3g})"


def self_check(out_dir):
    """Reload every exported file through the renaming in reverse and compare."""
    ok = True

    def expect(cond, what):
        nonlocal ok
        print(("  ok   " if cond else "  FAIL ") + what)
        ok &= bool(cond)

    for arch in ("resnet18", "resnet50", "vit_b_16"):
        d = os.path.join(out_dir, arch)
        print(arch)
        ref = safetensors_io.load_file(os.path.join(d, "ref.safetensors"))
        sd = torch.load(os.path.join(d, "weights.pth"))
        model = getattr(torchvision.models, arch)(weights=None, num_classes=1000).eval()

        def check(name, loaded):
            expect(list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd),
                   f"{name}: same tensors as weights.pth")
            model.load_state_dict(loaded)
            f, lg = run_model(model, ref["input"])
            expect(torch.equal(f, ref["features"]) and torch.equal(lg, ref["logits"]),
                   f"{name}: features/logits bit-identical")

        check("weights.pth", sd)
        timm = safetensors_io.load_file(os.path.join(d, "timm.safetensors"))
        check("timm.safetensors", timm_to_vit(timm) if arch.startswith("vit") else timm)
        if arch == "vit_b_16":
            hf = safetensors_io.load_file(os.path.join(d, "hf", "model.safetensors"))
            check("hf/model.safetensors", hf_to_vit(hf))
            base = safetensors_io.load_file(os.path.join(d, "hf_base", "model.safetensors"))
            rebuilt = hf_to_vit(base)
            expect(set(sd) - set(rebuilt) == {"heads.head.weight", "heads.head.bias"},
                   "hf_base: everything but the head")
            with open(os.path.join(d, "hf", "config.json")) as fh:
                cfg = json.load(fh)
            with torch.no_grad():
                f, lg = _manual_vit_hf(hf, cfg, ref["input"])
            print(f"  info manual HF-style ViT: features {_diff(f, ref['features'])}, "
                  f"logits {_diff(lg, ref['logits'])}")
        else:
            model.load_state_dict(sd)
            folded = _fold_bn_resnet(model)
            f, lg = run_model(folded, ref["input"])
            print(f"  info BN folded into conv: features {_diff(f, ref['features'])}, "
                  f"logits {_diff(lg, ref['logits'])}")
        print(f"  info |features| max {ref['features'].abs().max().item():.3g}, "
              f"logits std {ref['logits'].std().item():.3g}, top1 {ref['logits'].argmax(1).tolist()}")

    d = os.path.join(out_dir, "vit_small_interp")
    print("vit_small_interp")
    ref = safetensors_io.load_file(os.path.join(d, "ref.safetensors"))
    with open(os.path.join(d, "meta.json")) as fh:
        meta = json.load(fh)
    sd = torch.load(os.path.join(d, "weights.pth"))
    cfg = {k: meta[k] for k in SMALL_VIT}
    model = tv_vit.VisionTransformer(image_size=meta["image_size"], **cfg).eval()
    sd96 = tv_vit.interpolate_embeddings(meta["image_size"], meta["patch_size"], OrderedDict(sd))
    expect(torch.equal(sd96["encoder.pos_embedding"], ref["pos_embedding"]), "pos_embedding interpolation")
    model.load_state_dict(sd96)
    f, lg = run_model(model, ref["input"])
    expect(torch.equal(f, ref["features"]) and torch.equal(lg, ref["logits"]),
           "features/logits bit-identical")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    ap.add_argument("--self-check", action="store_true",
                    help="after writing, reload every file through the reverse renaming and compare")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    print(f"models: {write(args.out_dir, args.force)} [{time.time() - t0:.1f}s]")
    if args.self_check and not self_check(args.out_dir):
        sys.exit(1)


if __name__ == "__main__":
    main()
