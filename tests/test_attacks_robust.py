"""robust_accuracy and the AutoAttack cascade: presets, invariants, sanity warnings, seeds and resuming."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from attack_models import images, predicted, single_thread, tiny_cnn
from cnn_aliasing.attacks import (
    APGD,
    PRESETS,
    AttackInvariantError,
    AutoAttackWarning,
    ThreatModel,
    check_radius,
    list_attacks,
    resolve_attacks,
    robust_accuracy,
)
from cnn_aliasing.attacks.autoattack import check_square
from cnn_aliasing.attacks.base import per_example_norm
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.resume import StateMismatchError

FAST = {"apgd-ce": {"n_iter": 10}, "apgd-t": {"n_iter": 10, "n_target_classes": 3}}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_cnn()
    x = images(40)
    return model, x, predicted(model, x, n_wrong=6)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **kwargs):
    options = {"attack": "apgd-ce+apgd-t", "attack_options": FAST, "batch_size": 16, "progress": False}
    return robust_accuracy(model, x, y, eps, **{**options, **kwargs})


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_eps_zero_gives_the_clean_accuracy(setup, norm: str) -> None:
    model, x, y = setup
    result = evaluate(model, x, y, 0.0, norm=norm)
    assert result.clean_accuracy == pytest.approx(34 / 40)
    assert result.robust_accuracy == result.clean_accuracy
    assert result.per_attack == [("apgd-ce", 34 / 40), ("apgd-t", 34 / 40)]


def test_robust_accuracy_falls_as_eps_grows(setup) -> None:
    model, x, y = setup
    accuracies = [
        evaluate(model, x, y, eps, attack="apgd-ce").robust_accuracy for eps in (0, 1 / 255, 4 / 255, 0.1, 1)
    ]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == pytest.approx(34 / 40) and accuracies[-1] == 0.0
    assert len(set(accuracies)) >= 4


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 4 / 255), ("L2", 0.2)])
def test_adversarial_examples_in_ball_and_box_and_counted_right(setup, norm: str, eps: float) -> None:
    model, x, y = setup
    result = evaluate(model, x, y, eps, norm=norm, return_adversarial=True)
    adv = result.adversarial
    assert adv is not None and adv.shape == x.shape
    assert per_example_norm(adv - x, norm).max() <= eps + 1e-6  # type: ignore[arg-type]
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        correct = model(adv).argmax(dim=1) == y
    assert correct.float().mean().item() == pytest.approx(result.robust_accuracy)
    assert torch.equal(adv[:6], x[:6])  # misclassified clean images come back as they are
    assert 0 < result.robust_accuracy < result.clean_accuracy


def test_a_fixed_seed_repeats_the_run(setup) -> None:
    model, x, y = setup
    first = evaluate(model, x, y, 8 / 255, return_adversarial=True, seed=7)
    second = evaluate(model, x, y, 8 / 255, return_adversarial=True, seed=7)
    assert first.per_attack == second.per_attack
    assert torch.equal(first.adversarial, second.adversarial)
    record = json.loads(json.dumps(first.to_dict()))
    assert record["seed"] == 7 and record["attack"] == "apgd-ce+apgd-t" and record["n_images"] == 40
    assert [a["attack"] for a in record["per_attack"]] == ["apgd-ce", "apgd-t"]


def margins_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """z_y - max_{k != y} z_k of each image, by a loop over the classes in float64."""
    with torch.no_grad():
        logits = model(x).double().tolist()
    margins = []
    for z, label in zip(logits, y.tolist(), strict=True):
        margins.append(z[label] - max(v for k, v in enumerate(z) if k != label))
    return margins


def test_margins_are_the_clean_margin_lowered_to_the_attacks_images(setup) -> None:
    model, x, y = setup
    result = evaluate(model, x, y, 8 / 255, return_adversarial=True)
    assert result.margins is not None and result.margins.dtype == torch.float64
    assert result.clean_points is not None and result.robust_points is not None
    clean = torch.tensor(margins_by_hand(model, x, y), dtype=torch.float64)
    found = torch.tensor(margins_by_hand(model, result.adversarial, y), dtype=torch.float64)
    wrong, broken = ~result.clean_points, result.clean_points & ~result.robust_points
    assert wrong.sum() == 6 and broken.sum() > 0 and result.robust_points.sum() > 0
    # unattacked (misclassified) points keep their clean margin, <= 0
    assert torch.allclose(result.margins[wrong], clean[wrong], rtol=1e-6, atol=1e-6)
    assert (result.margins[wrong] <= 0).all()
    # a broken point's margin is that of the image that broke it: negative
    assert torch.allclose(result.margins[broken], found[broken], rtol=1e-6, atol=1e-6)
    assert (result.margins[broken] < 0).all()
    # every margin is at most the clean one, and still positive where the point stayed robust (APGD returns
    # the clean image of a point it did not fool, so there it is the clean margin)
    assert (result.margins <= clean + 1e-6).all() and (result.margins[result.robust_points] > 0).all()


def test_at_eps_zero_every_margin_is_the_clean_one(setup) -> None:
    model, x, y = setup
    result = evaluate(model, x, y, 0.0)
    assert result.margins is not None
    expected = margins_by_hand(model, x, y)
    assert result.margins.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert ((result.margins > 0) == result.clean_points).all()


def test_uint8_images_equal_their_float_version(setup) -> None:
    model, _, _ = setup
    x8 = (images(16) * 255).round().to(torch.uint8)
    y = predicted(model, x8.float() / 255)
    a = evaluate(model, x8, y, 4 / 255, return_adversarial=True)
    b = evaluate(model, x8.float() / 255, y, 4 / 255, return_adversarial=True)
    assert a.per_attack == b.per_attack and torch.equal(a.adversarial, b.adversarial)


class Killed(Exception):
    """Stands in for a kill (SIGKILL, out of time) in the middle of a batch."""


class KillAfter:
    """Wraps attacks; the call after ``allowed`` calls (counted over all of them) raises :class:`Killed`.
    ``calls`` counts the batches attacked."""

    def __init__(self, allowed: int = 10**9) -> None:
        self.left = allowed
        self.calls = 0

    def wrap(self, attack: APGD):
        outer = self

        class Wrapped:
            name = attack.name

            def __call__(self, *args):
                if outer.left == 0:
                    raise Killed
                outer.left -= 1
                outer.calls += 1
                return attack(*args)

        return Wrapped()


def attacks() -> list[APGD]:
    return [
        APGD(loss="ce", n_iter=10, name="apgd-ce"),
        APGD("dlr-targeted", 10, n_target_classes=3, name="apgd-t"),
    ]


@pytest.mark.parametrize("kill_after", [1, 2, 4])  # at least one batch done: a restart would redo it
def test_resume_after_a_kill_gives_the_same_numbers(setup, tmp_path: Path, kill_after: int) -> None:
    model, x, y = setup
    common = {"attack_options": None, "return_adversarial": True, "batch_size": 8}
    counted = KillAfter()
    whole = evaluate(model, x, y, 8 / 255, attack=[counted.wrap(a) for a in attacks()], **common)
    state = tmp_path / "state.json"
    killer = KillAfter(kill_after)
    with pytest.raises(Killed):
        evaluate(model, x, y, 8 / 255, attack=[killer.wrap(a) for a in attacks()], state_path=state, **common)
    saved = json.loads(state.read_text())
    assert saved["clean"] is not None
    assert len(saved["per_attack"]) + len(saved["batches_done"]) > 0
    resuming = KillAfter()
    resumed = evaluate(
        model, x, y, 8 / 255, attack=[resuming.wrap(a) for a in attacks()], state_path=state, **common
    )
    assert counted.calls > 4 and resuming.calls == counted.calls - kill_after  # only the batches left
    assert resumed.per_attack == whole.per_attack
    assert (resumed.clean_accuracy, resumed.robust_accuracy) == (whole.clean_accuracy, whole.robust_accuracy)
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert torch.equal(resumed.margins, whole.margins)  # bit for bit
    assert (whole.margins < margins_at_clean(model, x, y) - 1e-3).sum() > 4  # the attacks lowered many
    # a finished state answers without running any attack
    again = evaluate(
        model, x, y, 8 / 255, attack=[KillAfter(0).wrap(a) for a in attacks()], state_path=state, **common
    )
    assert again.per_attack == whole.per_attack and torch.equal(again.adversarial, whole.adversarial)
    assert torch.equal(again.margins, whole.margins)


def margins_at_clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.tensor(margins_by_hand(model, x, y), dtype=torch.float64)


def test_a_state_of_an_older_version_is_refused(setup, tmp_path: Path) -> None:
    """States before version 3 hold no margins: they cannot be continued."""
    model, x, y = setup
    state = tmp_path / "state.json"
    evaluate(model, x, y, 2 / 255, attack="apgd-ce", state_path=state)
    saved = json.loads(state.read_text())
    assert saved["version"] == 3 and len(saved["margins"]) == 40
    for version in (1, 2):
        old = {k: v for k, v in saved.items() if k != "margins"}
        state.write_text(json.dumps({**old, "version": version}))
        with pytest.raises(StateMismatchError, match=f"a state of version {version} .*hold no margins"):
            evaluate(model, x, y, 2 / 255, attack="apgd-ce", state_path=state)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_a_real_sigkill(setup, tmp_path: Path) -> None:
    """A process SIGKILLed in its third batch (no handler, no finally runs) resumes to the same numbers."""
    model, x, y = setup
    state = tmp_path / "state.json"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from attack_models import images, predicted, tiny_cnn
        from cnn_aliasing.attacks import APGD, robust_accuracy
        calls = 0
        class DiesInThirdBatch(APGD):
            def __call__(self, *args):
                global calls
                calls += 1
                if calls == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().__call__(*args)
        model = tiny_cnn(); x = images(40); y = predicted(model, x, n_wrong=6)
        attack = [DiesInThirdBatch(loss="ce", n_iter=10, name="apgd-ce")]
        robust_accuracy(model, x, y, 8 / 255, attack=attack, batch_size=8, state_path={str(state)!r},
                        progress=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert json.loads(state.read_text())["batches_done"] == [0, 1]
    resuming, counted = KillAfter(), KillAfter()
    attack = [resuming.wrap(APGD(loss="ce", n_iter=10, name="apgd-ce"))]
    resumed = evaluate(model, x, y, 8 / 255, attack=attack, batch_size=8, state_path=state)
    attack = [counted.wrap(APGD(loss="ce", n_iter=10, name="apgd-ce"))]
    whole = evaluate(model, x, y, 8 / 255, attack=attack, batch_size=8)
    assert resumed.per_attack == whole.per_attack
    assert resuming.calls == counted.calls - 2  # the two batches done before the kill are not redone


def test_a_state_from_other_arguments_is_refused(setup, tmp_path: Path) -> None:
    model, x, y = setup
    state = tmp_path / "state.json"
    evaluate(model, x, y, 2 / 255, attack="apgd-ce", state_path=state)
    with pytest.raises(CnnAliasingError, match="eps="):
        evaluate(model, x, y, 4 / 255, attack="apgd-ce", state_path=state)
    with pytest.raises(CnnAliasingError, match="data_sha256"):
        evaluate(model, x.flip(0), y.flip(0), 2 / 255, attack="apgd-ce", state_path=state)
    with pytest.raises(
        StateMismatchError,
        match=r"written for model.weights_sha256=\"[0-9a-f]{64}\", this run has model.weights_sha256=",
    ):
        evaluate(tiny_cnn(seed=1), x, y, 2 / 255, attack="apgd-ce", state_path=state)
    state.write_text("{not json")
    with pytest.raises(CnnAliasingError, match="cannot resume"):
        evaluate(model, x, y, 2 / 255, attack="apgd-ce", state_path=state)


def test_an_attack_leaving_the_ball_raises(setup) -> None:
    model, x, y = setup

    class Cheat:
        name = "cheat"

        def __call__(self, model, images, labels, threat: ThreatModel, generator):
            return (images + 2 * threat.eps).clamp(0, 1)

    with pytest.raises(AttackInvariantError, match="'cheat' left the threat model"):
        evaluate(model, x, y, 0.1, attack=[Cheat()])


def test_presets_and_custom_lists() -> None:
    assert [name for name, _ in PRESETS.get("standard").attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert dict(PRESETS.get("standard").attacks)["square"] == {"n_queries": 5000, "p_init": 0.8}
    assert resolve_attacks("apgd-ce+apgd-t").names == ["apgd-ce", "apgd-t"]
    ce, t = resolve_attacks("apgd-ce+apgd-t").attacks
    assert isinstance(ce, APGD) and isinstance(t, APGD)
    assert (ce.n_iter, ce.n_restarts, t.n_iter, t.n_restarts, t.n_target_classes) == (100, 1, 100, 1, 9)
    rand = resolve_attacks("rand")
    assert rand.names == ["apgd-ce", "apgd-dlr"] and rand.randomized
    assert all(isinstance(a, APGD) and a.eot_iter == 20 and a.n_iter == 100 for a in rand.attacks)
    apgd = resolve_attacks("pgd+apgd-ce", {"apgd-ce": {"n_iter": 3}}).attacks[1]
    assert isinstance(apgd, APGD) and apgd.n_iter == 3
    assert resolve_attacks(["pgd", "fgsm"]).names == ["pgd", "fgsm"]
    assert set(PRESETS) == {"standard", "standard-reference", "apgd-ce", "apgd-ce+apgd-t", "rand"}
    reference = resolve_attacks("standard-reference")
    assert reference.names == resolve_attacks("standard").names
    assert [getattr(a, "reference", None) for a in reference.attacks] == [True, True, True, None]


@pytest.mark.parametrize(
    ("attack", "options", "message"),
    [
        ("apgd-xx", None, r"unknown attack 'apgd-xx'; valid presets: apgd-ce, apgd-ce\+apgd-t, rand, "),
        ("apgd-ce", {"sqare": {"n_queries": 5}}, "options given for unknown sqare"),
        ("apgd-ce+apgd-ce", None, "listed twice"),
    ],
)
def test_bad_attack_arguments_say_what_is_valid(setup, attack: str, options, message: str) -> None:
    model, x, y = setup
    with pytest.raises(CnnAliasingError, match=message):
        evaluate(model, x, y, 0.1, attack=attack, attack_options=options)


@pytest.mark.skipif(
    not {"fab-t", "square"} <= set(list_attacks()), reason="FAB-T and Square are not registered yet"
)
def test_standard_cascade_runs_all_four_in_order(setup) -> None:
    model, x, y = setup
    assert resolve_attacks("standard").names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    options = {**FAST, "fab-t": {"n_iter": 5, "n_target_classes": 3}, "square": {"n_queries": 30}}
    result = evaluate(
        model, x[:16], y[:16], 8 / 255, attack="standard", attack_options=options, return_adversarial=True
    )
    assert [name for name, _ in result.per_attack] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accuracies = [a for _, a in result.per_attack]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[-1] == result.robust_accuracy
    assert per_example_norm(result.adversarial - x[:16], "Linf").max() <= 8 / 255 + 1e-6


def warned(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(model, x[:8], y[:8], 1 / 255, attack="apgd-ce", **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, AutoAttackWarning)]


def test_sanity_warnings(setup) -> None:
    model, x, y = setup
    assert warned(model, x, y) == []
    assert any("train mode" in m for m in warned(model.train(), x, y))
    model.eval()
    assert any("probabilities" in m for m in warned(nn.Sequential(model, nn.Softmax(dim=1)), x, y))

    class Noisy(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return model(images) + 0.1 * torch.randn(images.shape[0], 10)

    assert any("randomised" in m for m in warned(Noisy(), x, y))
    options = {"apgd-ce": {"n_iter": 2, "eot_iter": 2}, "apgd-dlr": {"n_iter": 2, "eot_iter": 2}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(Noisy(), x[:8], y[:8], 1 / 255, attack="rand", attack_options=options)
    assert not any("randomised" in str(w.message) for w in caught)

    class Dynamic(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(False), torch.enable_grad():  # forwards under inference mode
                probe = images.clone().requires_grad_(True)
                (torch.autograd.grad(model(probe).sum(), probe))
            return model(images)

    assert any("dynamic defense" in m for m in warned(Dynamic(), x, y))


def test_square_finding_more_warns_of_gradient_masking() -> None:
    with pytest.warns(AutoAttackWarning, match="gradient masking"):
        check_square([("apgd-ce", 0.50), ("apgd-t", 0.48), ("square", 0.45)], 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_square([("apgd-ce", 0.50), ("square", 0.499)], 0.9)
        check_square([("square", 0.1)], 0.9)


def test_channels_last_and_explicit_device_leave_the_model_as_found(setup) -> None:
    model, x, y = setup
    result = evaluate(model, x, y, 4 / 255, device="cpu", channels_last=True)
    assert result.clean_accuracy == pytest.approx(34 / 40)
    assert model[0].weight.is_contiguous() and not model.training


@pytest.mark.parametrize(
    ("eps", "norm", "shape", "needle"),
    [
        (0.0, "Linf", None, "eps must be above 0, got 0"),
        (-0.1, "L2", None, "eps must be above 0"),
        (1.0, "Linf", None, "did you mean 1/255 (0.003922)?"),
        (8.0, "Linf", None, "a Linf eps of 8 covers the whole pixel range"),
        (55.5, "L2", (3, 32, 32), "an L2 eps of 55.5 is above 55.43"),
    ],
)
def test_radii_a_user_cannot_have_meant_are_refused(eps, norm, shape, needle) -> None:
    with pytest.raises(CnnAliasingError, match=re.escape(needle)):
        check_radius(eps, norm, shape)


def test_radii_in_range_pass() -> None:
    for eps, norm, shape in [(8 / 255, "Linf", None), (0.999, "Linf", None), (0.5, "L2", (3, 32, 32))]:
        check_radius(eps, norm, shape)
    check_radius(55.4, "L2", (3, 32, 32))  # just below sqrt(3072) = 55.43
    check_radius(100.0, "L2", None)  # no shape: no diameter to compare with
