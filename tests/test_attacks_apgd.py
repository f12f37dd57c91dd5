"""APGD: the closed-form optimum on linear models, the reference's losses and schedule, reproducibility."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attack_models import images, linear_model, predicted, single_thread, tiny_cnn
from cnn_aliasing.attacks import (
    APGD,
    Attack,
    ThreatModel,
    ZeroGradientWarning,
    create_attack,
)
from cnn_aliasing.attacks.apgd import _oscillating
from cnn_aliasing.attacks.base import dlr_loss, margin, per_example_norm, targeted_dlr_loss
from cnn_aliasing.errors import CnnAliasingError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def linf_worst_margin(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact min over the Linf ball (within [0, 1]) of z_y - max_j z_j for a linear model, per point.

    Per class j the margin is linear, so each coordinate moves by eps (or to the box's edge) against the
    sign of w_y - w_j; the point can be fooled iff some class's minimum is below 0.
    """
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    w, b = linear.weight.double(), linear.bias.double()
    xf = x.flatten(1).double()[:, None, :]
    v = w[y][:, None, :] - w[None]
    m = (v * xf).sum(-1) + b[y][:, None] - b[None]
    room = torch.where(v > 0, xf.clamp(max=eps), (1 - xf).clamp(max=eps))
    worst = m - (v.abs() * room).sum(-1)
    worst[torch.arange(len(y)), y] = float("inf")
    return worst.min(dim=1).values


def run(
    attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int = 0
) -> torch.Tensor:
    return attack(model, x, y, threat, torch.Generator().manual_seed(seed))


def still_correct(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(dim=1) == y


@pytest.mark.parametrize(("n_classes", "name"), [(2, "apgd-ce"), (10, "apgd-ce"), (10, "apgd-t")])
@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_linear_model_broken_exactly_where_theory_says(n_classes: int, name: str, eps: float) -> None:
    model = linear_model(n_classes)
    x = images(100)
    y = predicted(model, x)
    worst = linf_worst_margin(model, x, y, eps)
    assert worst.abs().min() > 1e-3  # no point on the fence: theory is unambiguous
    adv = run(create_attack(name, n_iter=20), model, x, y, ThreatModel("Linf", eps))
    assert torch.equal(still_correct(model, adv, y), worst > 0)
    assert 0 < (worst > 0).sum() < len(y)


def test_linear_binary_l2_broken_exactly_where_theory_says() -> None:
    """Away from the box's faces the L2 optimum of a binary linear model is the margin over ||w1 - w0||."""
    model = linear_model(2)
    x = images(100, low=0.3, high=0.7)  # eps <= 0.3: the box never binds
    y = predicted(model, x)
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    w = linear.weight.double()
    v = (w[y] - w[1 - y]).norm(dim=1)
    with torch.no_grad():
        m = margin(model(x).double(), y)
    eps = 0.2
    adv = run(create_attack("apgd-ce", n_iter=20), model, x, y, ThreatModel("L2", eps))
    assert torch.equal(still_correct(model, adv, y), m > eps * v)
    assert 0 < (m > eps * v).sum() < len(y)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_adversarial_within_ball_and_box_and_reproducible(norm: str, name: str) -> None:
    model = tiny_cnn()
    x = images(24)
    y = predicted(model, x, n_wrong=4)
    threat = ThreatModel(norm, 8 / 255 if norm == "Linf" else 0.25)  # type: ignore[arg-type]
    attack = (
        create_attack(name, n_iter=10, n_target_classes=3)
        if name == "apgd-t"
        else create_attack(name, n_iter=10)
    )
    adv = run(attack, model, x, y, threat, seed=3)
    assert per_example_norm(adv - x, threat.norm).max() <= threat.eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    fooled = ~still_correct(model, adv, y)
    assert fooled[:4].all()  # misclassified at the start: returned unchanged, still misclassified
    assert torch.equal(adv[:4], x[:4])
    assert torch.equal(adv[~fooled], x[~fooled])  # points it could not fool come back clean
    assert torch.equal(adv, run(attack, model, x, y, threat, seed=3))


def test_eps_zero_changes_nothing() -> None:
    model = tiny_cnn()
    x = images(16)
    y = predicted(model, x, n_wrong=3)
    for name in ("apgd-ce", "apgd-t"):
        adv = run(create_attack(name, n_iter=5), model, x, y, ThreatModel("Linf", 0.0))
        assert torch.equal(adv, x)


def test_model_left_as_found() -> None:
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(8)
    run(
        create_attack("apgd-t", n_iter=5, n_target_classes=2),
        model,
        x,
        predicted(model, x),
        ThreatModel("L2", 0.5),
    )
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dlr_losses_match_the_reference_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 10, generator=gen)
    y = torch.randint(0, 10, (50,), generator=gen)
    t = torch.randint(0, 10, (50,), generator=gen)
    top, order = z.sort(dim=1)
    u = torch.arange(50)
    label_on_top = (order[:, -1] == y).float()
    reference = -(z[u, y] - top[:, -2] * label_on_top - top[:, -1] * (1 - label_on_top)) / (
        top[:, -1] - top[:, -3] + 1e-12
    )
    assert torch.allclose(dlr_loss(z, y), reference, rtol=0, atol=1e-6)
    reference_t = -(z[u, y] - z[u, t]) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)
    assert torch.allclose(targeted_dlr_loss(z, y, t), reference_t, rtol=0, atol=1e-6)


def test_dlr_needs_enough_classes() -> None:
    model = linear_model(2)
    x = images(4)
    with pytest.raises(CnnAliasingError, match="at least 3 classes"):
        run(create_attack("apgd-dlr", n_iter=2), model, x, predicted(model, x), ThreatModel("Linf", 0.1))


def test_oscillation_check_keeps_the_reference_wrap() -> None:
    """At the first checkpoint the reference compares step 0 with the unwritten last slot (zero)."""
    steps = torch.tensor([[1.0, 2.0, 1.5, 0.0], [-1.0, -0.5, 0.0, 0.0]])  # 2 points (rows), n_iter = 4
    # i = 2, k = 3: point 0 rises at steps 0 (1 > slot 3's 0) and 1; point 1 at steps 1 and 2: 2 <= 3 rho
    assert _oscillating(steps, 2, 3, 0.75).tolist() == [True, True]
    assert _oscillating(steps, 2, 3, 0.5).tolist() == [False, False]
    assert _oscillating(steps, 3, 2, 0.75).tolist() == [True, True]


def test_zero_gradients_warn() -> None:
    """A model whose output ignores its input: the DLR attacks warn, as the reference does."""
    linear = nn.Linear(192, 10)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    with torch.no_grad():
        linear.weight.zero_()
    x = images(3)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.warns(ZeroGradientWarning, match="3 runs \\(point and target\\) had a zero gradient"):
        adv = run(create_attack("apgd-dlr", n_iter=10), model, x, y, ThreatModel("Linf", 0.1))
    assert adv.shape == x.shape


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("apgd-ce", {"n_iter": 0}, "attack 'apgd-ce' option n_iter must be an integer >= 1, got int 0"),
        ("apgd-ce", {"n_restarts": 1.5}, "option n_restarts must be an integer >= 1, got float 1.5"),
        (
            "apgd-dlr",
            {"eot_iter": True},
            "attack 'apgd-dlr' option eot_iter must be an integer >= 1, got bool",
        ),
        (
            "apgd-t",
            {"n_target_classes": 0},
            "attack 'apgd-t' option n_target_classes must be an integer >= 1",
        ),
        ("apgd-ce", {"rho": 0.0}, "option rho must be a number in (0, 1], got float 0.0"),
        ("apgd-ce", {"rho": 2}, "option rho must be a number in (0, 1], got int 2"),
        ("apgd-ce", {"rho": "x"}, "option rho must be a number in (0, 1], got str 'x'"),
        (
            "apgd-ce",
            {"loss": "dlr"},
            "attack 'apgd-ce': unknown option 'loss'; valid options: n_iter, n_restarts",
        ),
        ("apgd-t", {"steps": 5}, "attack 'apgd-t': unknown option 'steps'; valid options: n_iter"),
    ],
)
def test_bad_options_name_the_attack_option_and_value(name: str, options: dict, message: str) -> None:
    with pytest.raises(CnnAliasingError) as info:
        create_attack(name, **options)
    assert message in str(info.value)


def test_a_directly_built_apgd_checks_its_loss_and_options() -> None:
    with pytest.raises(
        CnnAliasingError, match="loss must be one of 'ce', 'dlr', 'dlr-targeted', got str 'hinge'"
    ):
        APGD(loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(
        CnnAliasingError, match="attack 'apgd-ce' option n_iter must be an integer >= 1, got int 0"
    ):
        APGD(n_iter=0)


def test_eot_averages_gradients_of_a_randomised_model() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) + 0.01 * torch.randn(x.shape[0], 10)

    model = Noisy().eval()
    x = images(8)
    y = predicted(model.net, x)
    adv = run(create_attack("apgd-ce", n_iter=4, eot_iter=3), model, x, y, ThreatModel("Linf", 0.05))
    assert per_example_norm(adv - x, "Linf").max() <= 0.05 + 1e-6


def test_ce_attack_raises_the_loss() -> None:
    model = tiny_cnn()
    x = images(16)
    y = predicted(model, x)
    attack = create_attack("apgd-ce", n_iter=20)
    threat = ThreatModel("Linf", 2 / 255)
    adv = run(attack, model, x, y, threat)
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        worst = F.cross_entropy(model(adv), y)
    assert worst >= clean_loss
