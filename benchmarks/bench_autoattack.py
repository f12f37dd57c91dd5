"""AutoAttack "standard" on a small CIFAR-10 model: wall time and robust accuracy after each attack, and
optionally the reference implementation (fra31/auto-attack) on the same model, images, eps and seed.

    python benchmarks/bench_autoattack.py --data-dir data                    # 200 test images, Linf 8/255
    python benchmarks/bench_autoattack.py --data-dir data --reference /tmp/ref_autoattack --out runs/aa.json
    python benchmarks/bench_autoattack.py --arch resnet20 --train standard --n-train 20000 --epochs 8 \
        --n-images 64 --eps 1/255 --reference /tmp/ref_autoattack

The model (``--arch``): a 4-conv CNN (16-32-64-64 channels) or the CIFAR ResNet-20 of He et al. (option-A
shortcuts), normalisation inside, trained once by the script (``--train``: FGSM-RS at 8/255 with
``cnn_aliasing.attacks.fgsm``, or standard training; SGD one-cycle, flips) and cached under the git-ignored
runs/, so later runs only evaluate. ``--attack standard-reference`` runs ours in the reference's order of
work (its adversarial examples are then comparable with the reference's bit for bit on the CPU).

Comparison mode: ``--reference DIR`` names a folder holding the reference's ``autoattack/`` package (a git
checkout kept outside this repository, never installed, never committed). It is imported by putting DIR
on ``sys.path`` in this mode only; without the option, or if DIR has no ``autoattack/``, it is skipped.
Its per-attack robust accuracies and times are read from its log lines; the two sets of adversarial
examples are compared image by image. Both run on the same device and threads, ours first, on the model
behind a counter (``RowCounter``) of the images each sends through it, with and without an input gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cnn_aliasing.attacks import ThreatModel, fgsm, robust_accuracy
from cnn_aliasing.data import load_cifar10
from cnn_aliasing.eps import parse_eps
from cnn_aliasing.files import write_json_atomic
from cnn_aliasing.models.normalization import make_normalizer
from cnn_aliasing.provenance import run_metadata


class _ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: stride-2 subsampling and zero channels appended (no parameters)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else _ShortcutA(cout - cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 of He et al. (2016): 3 stages of 3 basic blocks (16, 32, 64 channels), option-A
    shortcuts, about 0.27 M parameters and 41 MFLOPs per image; CIFAR-10 normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = make_normalizer("cifar10")
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(3):
                blocks.append(_BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(self.normalize(x)))
        return self.classifier(out.mean(dim=(2, 3)))


class SmallCNN(nn.Module):
    """Four 3x3 convolutions (16, 32, 64, 64 channels; the last three strided), global average pooling
    and a linear classifier; CIFAR-10 normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = make_normalizer("cifar10")
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


ARCHS = {"small-cnn": SmallCNN, "resnet20": ResNet20}


class RowCounter(nn.Module):
    """The attacked model behind a count of its forward passes and of the images (rows) they take, split
    into passes that record a graph for an input gradient and passes that do not: the model work an
    attack does, which bounds its time from below whatever its bookkeeping costs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.counts: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self.counts = {"passes_with_gradient": 0, "rows_with_gradient": 0, "passes": 0, "rows": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = "_with_gradient" if torch.is_grad_enabled() and x.requires_grad else ""
        self.counts[f"passes{kind}"] += 1
        self.counts[f"rows{kind}"] += x.shape[0]
        return self.model(x)


TRAINING = ("fgsm-rs", "standard")


def train(model: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Standard training, or FGSM-RS adversarial training (Wong et al. 2020) at Linf 8/255; SGD one-cycle,
    random flips, on the first ``--n-train`` training images."""
    images, labels = load_cifar10(args.data_dir, "train", n_images=args.n_train)
    threat = ThreatModel("Linf", 8 / 255)
    batch = 128
    steps = args.epochs * ((len(labels) + batch - 1) // batch)
    lr = 0.05 if args.train == "fgsm-rs" else 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(labels), generator=gen)
        began, correct = time.perf_counter(), 0
        for start in range(0, len(labels), batch):
            idx = order[start : start + batch]
            x = images[idx].to(device).float() / 255
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(3)
            y = labels[idx].to(device)
            if args.train == "fgsm-rs":
                x = fgsm(model, x, y, threat, random_start=True, generator=gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += (logits.argmax(1) == y).sum().item()
        print(
            f"epoch {epoch + 1}/{args.epochs}: {args.train} train accuracy {correct / len(labels):.2%} "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    model.eval()


def load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The benchmark's model, trained once and cached (the cache name says architecture and training)."""
    cache = Path(args.model_cache or f"runs/bench_autoattack_{args.arch}_{args.train}.safetensors")
    torch.manual_seed(0)
    model = ARCHS[args.arch]().to(device)
    if cache.exists():
        model.load_state_dict(load_file(cache, device=str(device)))
    else:
        train(model, args, device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), cache)
    return model.eval()


def run_ours(
    model: RowCounter, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[dict[str, Any], torch.Tensor]:
    model.reset()
    began = time.perf_counter()
    result = robust_accuracy(
        model,
        x,
        y,
        args.eps,
        norm=args.norm,
        attack=args.attack,
        batch_size=args.batch_size,
        seed=0,
        return_adversarial=True,
    )
    wall = time.perf_counter() - began
    assert result.adversarial is not None
    return {**result.to_dict(), "wall_seconds": wall, "model_work": dict(model.counts)}, result.adversarial


_LOG_LINE = re.compile(r"robust accuracy after ([A-Z0-9-]+): ([0-9.]+)% \(total time ([0-9.]+) s\)")


def run_reference(
    model: RowCounter, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, Any], torch.Tensor] | None:
    folder = Path(args.reference)
    if not (folder / "autoattack" / "__init__.py").is_file():
        print(f"no autoattack/ package in {folder}: reference comparison skipped")
        return None
    sys.path.insert(0, str(folder))
    from autoattack import AutoAttack  # the reference, imported from the given folder only

    adversary = AutoAttack(model, norm=args.norm, eps=args.eps, version="standard", seed=0, device=device)
    log = io.StringIO()
    model.reset()
    began = time.perf_counter()
    with contextlib.redirect_stdout(log):
        x_adv = adversary.run_standard_evaluation(x.to(device), y.to(device), bs=args.batch_size).cpu()
    wall = time.perf_counter() - began
    work = dict(model.counts)
    print(log.getvalue(), end="")
    with torch.no_grad():
        robust = (model(x_adv.to(device)).argmax(1).cpu() == y).float().mean().item()
    stages = [(m[1].lower(), float(m[2]) / 100, float(m[3])) for m in _LOG_LINE.finditer(log.getvalue())]
    cumulative = [0.0] + [s for _, _, s in stages]
    record = {
        "robust_accuracy": robust,
        "per_attack": [{"attack": n, "robust_accuracy": a} for n, a, _ in stages],
        "attack_seconds": [
            {"attack": n, "seconds": cumulative[i + 1] - cumulative[i]} for i, (n, _, _) in enumerate(stages)
        ],
        "wall_seconds": wall,
        "model_work": work,
    }
    return record, x_adv


def agreement(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ours: torch.Tensor, ref: torch.Tensor
) -> dict[str, int]:
    """How many images get the same verdict, and how many adversarial examples are equal bit for bit."""
    with torch.no_grad():
        robust_ours = model(ours).argmax(1) == y
        robust_ref = model(ref).argmax(1) == y
        broken = ~robust_ours & ~robust_ref & (model(x).argmax(1) == y)
    same = (ours == ref).flatten(1).all(dim=1)
    return {
        "same_verdict": int((robust_ours == robust_ref).sum()),
        "broken_by_both": int(broken.sum()),
        "identical_adversarial_among_broken": int((same & broken).sum()),
    }


def table(ours: dict[str, Any], reference: dict[str, Any] | None) -> str:
    rows = ["| stage | ours: robust acc. | ours: s | reference: robust acc. | reference: s |"]
    rows.append("| --- | ---: | ---: | ---: | ---: |")
    ref_acc = {r["attack"]: r["robust_accuracy"] for r in (reference or {}).get("per_attack", [])}
    ref_sec = {r["attack"]: r["seconds"] for r in (reference or {}).get("attack_seconds", [])}
    seconds = {r["attack"]: r["seconds"] for r in ours["attack_seconds"]}
    rows.append(f"| clean | {ours['clean_accuracy']:.2%} | | | |")
    for stage in ours["per_attack"]:
        name = stage["attack"]
        ref = f"{ref_acc[name]:.2%}" if name in ref_acc else "-"
        ref_s = f"{ref_sec[name]:.1f}" if name in ref_sec else "-"
        rows.append(f"| {name} | {stage['robust_accuracy']:.2%} | {seconds[name]:.1f} | {ref} | {ref_s} |")
    ref_wall = f"{reference['wall_seconds']:.1f}" if reference else "-"
    ref_final = f"{reference['robust_accuracy']:.2%}" if reference else "-"
    ours_final = f"{ours['robust_accuracy']:.2%} | {ours['wall_seconds']:.1f}"
    rows.append(f"| **total (wall)** | {ours_final} | {ref_final} | {ref_wall} |")
    return "\n".join(rows)


def model_work(ours: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """One line per implementation: the images it sent through the model, with and without gradient."""
    lines = []
    for who, record in (("ours", ours), ("reference", reference)):
        if record:
            work = record["model_work"]
            n_grad, passes_grad = work["rows_with_gradient"], work["passes_with_gradient"]
            with_gradient = f"{n_grad:,} images in {passes_grad:,} passes"
            without = f"{work['rows']:,} images in {work['passes']:,} passes"
            lines.append(f"model work, {who}: {with_gradient} with an input gradient, {without} without")
    return "\n".join(lines)


def pass_costs(model: nn.Module, device: torch.device, sizes: list[int]) -> list[dict[str, float]]:
    """Milliseconds per image of a forward pass (inference mode) and of a forward and input-gradient pass
    of ``model`` at each batch size: the median over repeats, on random images."""

    def median_seconds(run: Callable[[], object], repeats: int) -> float:
        run()  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
        return sorted(times)[len(times) // 2]

    rows = []
    for n in sizes:
        x = torch.rand(n, 3, 32, 32, device=device)

        def forward(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model(x)

        def with_gradient(x: torch.Tensor = x) -> object:
            xg = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(xg).sum(), xg)

        repeats = max(5, min(40, 600 // n))
        rows.append(
            {
                "images": n,
                "forward_ms_per_image": 1e3 * median_seconds(forward, repeats) / n,
                "gradient_ms_per_image": 1e3 * median_seconds(with_gradient, repeats) / n,
            }
        )
        print(
            f"{n:4d} images a pass: forward {rows[-1]['forward_ms_per_image']:.3f} ms per image, "
            f"forward and input gradient {rows[-1]['gradient_ms_per_image']:.3f}",
            flush=True,
        )
    return rows


def compiled_pass_costs(model: nn.Module, device: torch.device, sizes: list[int]) -> dict[str, Any]:
    """The seconds torch.compile takes for the forward and for the input-gradient graphs of ``model``
    (first calls, 27 images), then :func:`pass_costs` of the compiled model. Its parameters are frozen
    first: an attack needs no gradient for them, and a compiled backward would compute them all the same."""
    model.requires_grad_(False)
    compiled = torch.compile(model, dynamic=True)
    x = torch.rand(27, 3, 32, 32, device=device)
    began = time.perf_counter()
    with torch.inference_mode():
        compiled(x)
    forward_seconds = time.perf_counter() - began
    began = time.perf_counter()
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(compiled(xg).sum(), xg)
    gradient_seconds = time.perf_counter() - began
    print(f"torch.compile: {forward_seconds:.1f} s (forward), {gradient_seconds:.1f} s (input gradient)")
    return {
        "compile_seconds": {"forward": forward_seconds, "gradient": gradient_seconds},
        "compiled_pass_costs": pass_costs(compiled, device, sizes),  # type: ignore[arg-type]
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--n-images", type=int, default=200, help="first N test images (default 200)")
    parser.add_argument("--eps", type=parse_eps, default=parse_eps("8/255"), help="radius, e.g. 8/255")
    parser.add_argument("--norm", choices=["Linf", "L2"], default="Linf")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="small-cnn", help="the model attacked")
    parser.add_argument("--train", choices=TRAINING, default="fgsm-rs", help="how it is trained (once)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs if the model is not cached")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images (default all)")
    parser.add_argument("--model-cache", default=None, help="default runs/bench_autoattack_ARCH_TRAIN")
    parser.add_argument(
        "--attack",
        choices=["standard", "standard-reference"],
        default="standard",
        help="ours: the default order of work, or the reference's (point-by-point comparable)",
    )
    parser.add_argument("--reference", default=None, help="folder holding the reference's autoattack/")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--train-only", action="store_true", help="train and cache the model, then stop")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="with --pass-cost: time the model under torch.compile (dynamic shapes) beside it, after "
        "timing its compilation (forward, then forward and input gradient)",
    )
    parser.add_argument(
        "--pass-cost",
        type=int,
        nargs="*",
        default=None,
        metavar="N",
        help="instead of attacking, time the model's passes per image at these batch sizes "
        "(default 1 3 9 27 81 243)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args, device)
    if args.train_only:
        return
    if args.pass_cost is not None:
        sizes = args.pass_cost or [1, 3, 9, 27, 81, 243]
        record: dict[str, Any] = {"config": vars(args), "pass_costs": pass_costs(model, device, sizes)}
        if args.compile:
            record.update(compiled_pass_costs(model, device, sizes))
        if args.out:
            record["meta"] = run_metadata()
            write_json_atomic(args.out, json.loads(json.dumps(record, default=str)))
        return
    images, labels = load_cifar10(args.data_dir, "test", n_images=args.n_images)
    x = images.float() / 255

    counter = RowCounter(model)
    ours, ours_adv = run_ours(counter, x, labels, args)
    compared = run_reference(counter, x, labels, args, device) if args.reference else None
    reference = compared[0] if compared else None
    print(table(ours, reference))
    print(model_work(ours, reference))
    agree = agreement(model.cpu(), x, labels, ours_adv, compared[1]) if compared else None
    if agree:
        print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in agree.items()))
    if args.out:
        result: dict[str, Any] = {"config": vars(args), "ours": ours, "reference": reference}
        result.update(agreement=agree, meta=run_metadata(), torch_threads=torch.get_num_threads())
        write_json_atomic(args.out, json.loads(json.dumps(result, default=str)))


if __name__ == "__main__":
    main()
