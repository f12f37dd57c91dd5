"""Write ``autoattack_golden.json``: what the reference AutoAttack (fra31/auto-attack) computes on the
fixed cases of ``golden_models.py``, for ``tests/test_autoattack_golden.py`` to hold our attacks to.

    python tests/golden/make_autoattack_golden.py --reference /tmp/ref_autoattack_golden

``--reference DIR`` names a folder holding the reference's ``autoattack/`` package (an export of the
repository, kept outside ours, never installed, never committed); it is imported by putting DIR on
``sys.path`` in this script only. The commit is read with ``git -C DIR rev-parse HEAD`` or given with
``--commit``; it goes into the JSON with the torch version and the CPU capability torch dispatches to
(AVX2, AVX512, ...): the test compares bit for bit only where both are the same (see its docstring).
Everything runs on the CPU on one thread.

What is recorded (numbers and attack names only, nothing of the reference's code):

- per attack case (APGD-CE, APGD-CE with restarts, APGD-T, FAB-T, Square; both models, Linf and L2): the
  per-point success, the L-inf and L2 size of each final perturbation, and
  - APGD: the SHA-256 of each adversarial image's float32 bytes; per run (restart or target) the points it
    attacks, their targets (APGD-T) and the loss of every point at each checkpoint (step-size check);
  - FAB-T: per run the points and targets; each successful perturbation in full (rounded to 1e-7) and
    how much farther than it the next adversarial iterate of its run was (a near tie makes the choice
    of iterate, not the perturbation's size, hinge on float rounding);
  - Square: the success per point for seeds 0..SQUARE_SEEDS-1 (how often each point falls), and for
    Linf the sign structure of the starting point;
- the standard cascade (APGD-CE, APGD-T, FAB-T, Square with few queries): the robust accuracy after each
  stage and which stage broke each point, checked to be independent of Square's random draws;
- Square's window side at every iteration of a 5,000-query run on a 3x32x32 image (Linf and L2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import golden_models as gm  # noqa: E402  (next to this script)
from golden_models import Recorder, point_indices, run_length, sha256, sizes, stripes  # noqa: E402

FORMAT = "cnn-aliasing autoattack golden"
SQUARE_SEEDS = 10
SCHEDULE_QUERIES = 5000
SCHEDULE_EPS = 1e-6  # far too small to fool the model: every one of the queries runs
EPS: dict[tuple[str, str], float] = {
    ("cnn", "Linf"): 4 / 255,
    ("cnn", "L2"): 0.1,
    ("linear", "Linf"): 4 / 255,
    ("linear", "L2"): 0.1,
}
SQUARE_EPS: dict[tuple[str, str], float] = {
    ("cnn", "Linf"): 4 / 255,
    ("cnn", "L2"): 0.2,
    ("linear", "Linf"): 4 / 255,
    ("linear", "L2"): 0.2,
}
CASCADE_SQUARE_QUERIES = 100


def case_list() -> list[dict[str, Any]]:
    """The attack cases: id, attack (our registered name), model, norm, eps, our options, seed."""
    cases = []
    for model in gm.MODELS:
        for norm in ("Linf", "L2"):
            eps = EPS[(model, norm)]
            runs: list[tuple[str, str, dict[str, Any], float]] = [
                ("apgd-ce", "apgd-ce", {"n_iter": 100, "n_restarts": 1}, eps),
                ("apgd-ce-restarts", "apgd-ce", {"n_iter": 20, "n_restarts": 3}, eps),
                ("apgd-t", "apgd-t", {"n_iter": 40, "n_restarts": 1, "n_target_classes": 9}, eps),
                ("fab-t", "fab-t", {"n_iter": 40, "n_restarts": 1, "n_target_classes": 9}, eps),
                (
                    "square",
                    "square",
                    {"n_queries": 100, "p_init": 0.8, "n_restarts": 1},
                    SQUARE_EPS[(model, norm)],
                ),
            ]
            for label, attack, options, radius in runs:
                cases.append(
                    {
                        "id": f"{label}/{model}/{norm}",
                        "attack": attack,
                        "model": model,
                        "norm": norm,
                        "eps": radius,
                        "options": options,
                        "seed": 0,
                    }
                )
    return cases


def cascade_list() -> list[dict[str, Any]]:
    """The standard-cascade cases (standard options, Square with CASCADE_SQUARE_QUERIES queries)."""
    return [
        {
            "id": f"standard/{model}/{norm}",
            "model": model,
            "norm": norm,
            "eps": EPS[(model, norm)],
            "square_queries": CASCADE_SQUARE_QUERIES,
            "seed": 0,
        }
        for model, norm in (("cnn", "Linf"), ("cnn", "L2"))
    ]


def success(model: nn.Module, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[bool]:
    """Per point: classified correctly when clean, misclassified at ``adv``."""
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
        fooled = model(adv).argmax(dim=1) != y
    return (clean & fooled).tolist()


# ------------------------------------------------------------------------------------- the reference runs
def run_apgd(ref: Any, case: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """APGD-CE or APGD-T of the reference, recording its runs and checkpoint losses."""
    o = case["options"]
    common = dict(n_iter=o["n_iter"], norm=case["norm"], n_restarts=o["n_restarts"], eps=case["eps"])
    if case["attack"] == "apgd-t":
        attack = ref.APGDAttack_targeted(
            model, **common, seed=case["seed"], n_target_classes=o["n_target_classes"], device="cpu"
        )
    else:
        attack = ref.APGDAttack(model, **common, seed=case["seed"], loss="ce", device="cpu")
    runs: list[dict[str, Any]] = []
    single, oscillation = attack.attack_single_run, attack.check_oscillation

    def recording_single(xr: torch.Tensor, yr: torch.Tensor, x_init: Any = None) -> Any:
        run: dict[str, Any] = {"points": point_indices(xr, x), "checkpoints": [], "losses": []}
        if attack.y_target is not None:
            run["targets"] = attack.y_target.tolist()
        runs.append(run)
        return single(xr, yr, x_init)

    def recording_oscillation(losses: torch.Tensor, j: int, k: int, y5: Any, k3: float = 0.75) -> Any:
        runs[-1]["checkpoints"].append(j)
        runs[-1]["losses"].append(losses[j].tolist())
        return oscillation(losses, j, k, y5, k3=k3)

    attack.attack_single_run = recording_single
    attack.check_oscillation = recording_oscillation
    adv = attack.perturb(x.clone(), y.clone()).detach()
    return {
        "success": success(model, adv, x, y),
        "adv_sha256": [sha256(a) for a in adv],
        **sizes(adv, x),
        "runs": runs,
    }


def run_fab(ref: Any, case: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """FAB-T of the reference, recording its runs (points, targets), the perturbations it finds and, per
    point broken, how far the second-closest adversarial iterate of its run lies from the closest one."""
    o = case["options"]
    attack = ref.FABAttack_PT(
        model,
        norm=case["norm"],
        n_restarts=o["n_restarts"],
        n_iter=o["n_iter"],
        eps=case["eps"],
        seed=case["seed"],
        targeted=True,
        n_target_classes=o["n_target_classes"],
        device="cpu",
    )
    runs: list[dict[str, Any]] = []
    distances: list[list[list[float]]] = []  # per run, per point: the sizes of its adversarial iterates
    single, predicted = attack.attack_single_run, attack._get_predicted_label
    current: dict[str, Any] = {}

    def recording_single(xr: torch.Tensor, yr: torch.Tensor, use_rand_start: bool, is_targeted: bool) -> Any:
        with torch.no_grad():
            order = model(xr).sort(dim=-1)[1]
        runs.append({"points": point_indices(xr, x), "targets": order[:, -attack.target_class].tolist()})
        distances.append([[] for _ in range(xr.shape[0])])
        current.update(x0=xr.detach().clone(), y=yr.detach().clone(), calls=0)
        return single(xr, yr, use_rand_start=use_rand_start, is_targeted=is_targeted)

    def recording_predicted(xi: torch.Tensor) -> torch.Tensor:
        labels = predicted(xi)
        if current["calls"] > 0:  # the first call classifies the clean points, then one per iteration
            size = sizes(xi, current["x0"])["delta_linf" if case["norm"] == "Linf" else "delta_l2"]
            for k, fooled in enumerate((labels != current["y"]).tolist()):
                if fooled:
                    distances[-1][k].append(size[k])
        current["calls"] += 1
        return labels

    attack.attack_single_run = recording_single
    attack._get_predicted_label = recording_predicted
    adv = attack.perturb(x.clone(), y.clone()).detach()
    ok = success(model, adv, x, y)
    gaps: list[float | None] = [None] * x.shape[0]  # None: not broken, or one adversarial iterate only
    for run, sizes_of_run in zip(runs, distances, strict=True):  # a point broken in a run is in no later run
        for point, found in zip(run["points"], sizes_of_run, strict=True):
            if ok[point] and len(found) > 1 and min(found) <= case["eps"]:
                ranked = sorted(found)
                gaps[point] = ranked[1] - ranked[0]
    deltas = [
        [round(v, 7) for v in (a - c).flatten().tolist()] if s else None
        for a, c, s in zip(adv, x, ok, strict=True)
    ]
    return {"success": ok, **sizes(adv, x), "runs": runs, "deltas": deltas, "best_gap": gaps}


def make_square(ref: Any, model: nn.Module, norm: str, eps: float, n_queries: int, seed: int) -> Any:
    """The reference's Square as AutoAttack builds it (p_init 0.8, no rescaled schedule)."""
    return ref.SquareAttack(
        model,
        norm=norm,
        n_queries=n_queries,
        eps=eps,
        p_init=0.8,
        n_restarts=1,
        seed=seed,
        resc_schedule=False,
        device="cpu",
    )


def run_square(ref: Any, case: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Square of the reference: success at the case's seed, how often each point falls over
    SQUARE_SEEDS seeds, and (Linf) the sign structure of its starting point."""
    o = case["options"]
    assert o["p_init"] == 0.8 and o["n_restarts"] == 1
    recorder = Recorder(model)
    attack = make_square(ref, recorder, case["norm"], case["eps"], o["n_queries"], case["seed"])
    adv = attack.perturb(x.clone(), y.clone()).detach()
    start = recorder.inputs[1]  # the first call classifies the clean images, the second scores the start
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    record: dict[str, Any] = {"success": success(model, adv, x, y), **sizes(adv, x)}
    if case["norm"] == "Linf":
        record["start"] = stripes(start - x[correct])
    counts = [0] * x.shape[0]
    for seed in range(SQUARE_SEEDS):
        adv = make_square(ref, model, case["norm"], case["eps"], o["n_queries"], seed).perturb(
            x.clone(), y.clone()
        )
        counts = [c + int(s) for c, s in zip(counts, success(model, adv, x, y), strict=True)]
    record["success_count"] = counts
    record["success_seeds"] = SQUARE_SEEDS
    return record


def run_cascade(ref: Any, case: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The reference's standard AutoAttack (Square with few queries): robust accuracy after each stage and
    the stage that broke each point; checks that Square's stage does not depend on its seed."""
    adversary = ref.AutoAttack(
        model,
        norm=case["norm"],
        eps=case["eps"],
        version="standard",
        seed=case["seed"],
        device="cpu",
        verbose=False,
    )
    adversary.square.n_queries = case["square_queries"]
    broken_by: list[str | None] = [None] * x.shape[0]
    with torch.no_grad():
        for i, ok in enumerate((model(x).argmax(dim=1) == y).tolist()):
            broken_by[i] = None if ok else "clean"
    survivors: dict[str, list[int]] = {}

    def wrap(name: str, attack: Any) -> None:
        perturb = attack.perturb

        def recording(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            points = point_indices(xb, x)
            survivors[name] = points
            adv = perturb(xb, yb)
            with torch.no_grad():
                fooled = (model(adv).argmax(dim=1) != yb).tolist()
            for p, f in zip(points, fooled, strict=True):
                if f:
                    broken_by[p] = name
            return adv

        attack.perturb = recording

    stages = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert adversary.attacks_to_run == stages
    for name, attack in zip(
        stages, [adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square], strict=True
    ):
        wrap(name, attack)
    adversary.run_standard_evaluation(x.clone(), y.clone(), bs=x.shape[0])
    order = ["clean", *stages]
    robust = []
    for s in range(1, len(order)):
        robust.append(sum(b is None or order.index(b) > s for b in broken_by) / x.shape[0])
    clean = sum(b != "clean" for b in broken_by) / x.shape[0]
    # Square's stage must not hinge on its random draws: run it on its points with other seeds
    points = survivors.get("square", [])
    for seed in range(SQUARE_SEEDS):
        if not points:
            break
        square = make_square(ref, model, case["norm"], case["eps"], case["square_queries"], seed)
        adv = square.perturb(x[points].clone(), y[points].clone())
        with torch.no_grad():
            fooled = (model(adv).argmax(dim=1) != y[points]).tolist()
        expected = [broken_by[p] == "square" for p in points]
        if fooled != expected:
            raise RuntimeError(f"{case['id']}: Square's stage depends on its seed (seed {seed}); change eps")
    return {
        "clean_accuracy": clean,
        "per_attack": [[name, acc] for name, acc in zip(stages, robust, strict=True)],
        "broken_by": broken_by,
    }


def square_schedule(ref: Any) -> dict[str, Any]:
    """The window side of the reference's Square at every iteration of a 5,000-query run on one 3x32x32
    image that it cannot fool (AutoAttack's settings: p_init 0.8, no rescaled schedule)."""
    model = gm.linear_model(gm.SCHEDULE_SHAPE)
    x = gm.images(1, gm.SCHEDULE_SHAPE, seed=7)
    y = model(x).argmax(dim=1).detach()
    h = gm.SCHEDULE_SHAPE[1]
    out: dict[str, Any] = {
        "shape": list(gm.SCHEDULE_SHAPE),
        "n_queries": SCHEDULE_QUERIES,
        "eps": SCHEDULE_EPS,
    }
    for norm, draws in (("Linf", 2), ("L2", 4)):  # random corner draws per iteration
        attack = make_square(ref, model, norm, SCHEDULE_EPS, SCHEDULE_QUERIES, 0)
        highs: list[int] = []
        draw = attack.random_int

        def recording(
            low: int = 0, high: int = 1, shape: Any = (1,), draw: Callable = draw, highs: list[int] = highs
        ) -> Any:
            highs.append(int(high))
            return draw(low, high, list(shape))

        attack.random_int = recording
        adv = attack.perturb(x.clone(), y.clone())
        if bool((model(adv).argmax(dim=1) != y).any()):
            raise RuntimeError("the schedule case was fooled: lower SCHEDULE_EPS")
        sides = [h - high for high in highs[::draws]]
        if len(sides) != SCHEDULE_QUERIES or any(highs[i] != highs[i - i % draws] for i in range(len(highs))):
            raise RuntimeError("unexpected random draws in the schedule case")
        out[norm] = run_length(sides)
    return out


def reference_commit(folder: Path, given: str | None) -> str:
    """The reference's commit: ``given``, or what git says of ``folder``."""
    if given:
        return given
    try:
        return subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"{folder} is not a git checkout: give its commit with --commit") from None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference", required=True, type=Path, help="folder holding the reference's autoattack/"
    )
    parser.add_argument("--commit", default=None, help="the reference's commit (default: git rev-parse HEAD)")
    parser.add_argument("--out", type=Path, default=HERE / "autoattack_golden.json")
    args = parser.parse_args()
    if not (args.reference / "autoattack" / "__init__.py").is_file():
        raise SystemExit(f"no autoattack/ package in {args.reference}")
    commit = reference_commit(args.reference, args.commit)
    torch.set_num_threads(1)
    sys.path.insert(0, str(args.reference))
    import autoattack  # the reference, from the given folder only
    import autoattack.autopgd_base as apgd_ref
    import autoattack.fab_pt as fab_ref
    import autoattack.square as square_ref

    ref = argparse.Namespace(
        APGDAttack=apgd_ref.APGDAttack,
        APGDAttack_targeted=apgd_ref.APGDAttack_targeted,
        FABAttack_PT=fab_ref.FABAttack_PT,
        SquareAttack=square_ref.SquareAttack,
        AutoAttack=autoattack.AutoAttack,
    )
    x = gm.images()
    models = {name: make() for name, make in gm.MODELS.items()}
    labels = {name: gm.labels_for(model, x) for name, model in models.items()}
    runners = {"apgd-ce": run_apgd, "apgd-t": run_apgd, "fab-t": run_fab, "square": run_square}
    cases = []
    for case in case_list():
        model, y = models[case["model"]], labels[case["model"]]
        print(case["id"], flush=True)
        cases.append({**case, "reference": runners[case["attack"]](ref, case, model, x, y)})
    cascades = []
    for case in cascade_list():
        print(case["id"], flush=True)
        model, y = models[case["model"]], labels[case["model"]]
        cascades.append({**case, "reference": run_cascade(ref, case, model, x, y)})
    print("square schedule", flush=True)
    record = {
        "format": FORMAT,
        "reference": {"repository": "fra31/auto-attack", "commit": commit},
        "environment": {
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "inputs": {
            name: {"sha256": gm.fingerprint(model, x, labels[name]), "labels": labels[name].tolist()}
            for name, model in models.items()
        },
        "cases": cases,
        "cascades": cascades,
        "square_schedule": square_schedule(ref),
    }
    args.out.write_text(json.dumps(record, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
