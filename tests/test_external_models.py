"""Models from outside the package by name: timm:NAME, torchvision:NAME (fake libraries injected into
sys.modules: the real ones do not import beside the pinned CPU torch) and package.module:factory (a real
module written here), from Python, the command line and a study's [[models]]."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cifar_fixtures import make_layout
from cnn_aliasing import cli, find_downsamplers
from cnn_aliasing.errors import CnnAliasingError, ModelArgumentError, UnknownNameError
from cnn_aliasing.model_source import (
    IMAGENET_MEAN_STD,
    ExternalSource,
    LoadOptions,
    NormalizedModel,
    parse_external,
)
from cnn_aliasing.models import save_checkpoint
from cnn_aliasing.study import expand_models, parse_config
from cnn_aliasing.study.specs import LoadContext

TIMM_MEAN_STD = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


class TinyNet(nn.Module):
    """What the fake libraries build: one strided conv, a global pool, a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A fake ``timm`` (create_model, list_models); returns the calls create_model got."""
    calls: list[dict[str, Any]] = []
    names = ["resnet18", "resnet50", "tinynet", "plainnet", "vit_base_patch16_224"]

    def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if name not in names:
            raise RuntimeError(f"Unknown model ({name})")
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        model = TinyNet(**kwargs)
        if name != "plainnet":  # plainnet: a model without pretrained_cfg
            model.pretrained_cfg = {"mean": TIMM_MEAN_STD[0], "std": TIMM_MEAN_STD[1]}  # type: ignore[assignment]
        return model

    def list_models(pattern: str = "") -> list[str]:
        return sorted(names)

    timm = types.ModuleType("timm")
    timm.create_model = create_model  # type: ignore[attr-defined]
    timm.list_models = list_models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A fake ``torchvision.models`` (get_model, list_models); returns the calls get_model got."""
    calls: list[dict[str, Any]] = []
    tv_models = types.ModuleType("torchvision.models")

    def get_model(name: str, *, weights: Any = None, **kwargs: Any) -> nn.Module:
        calls.append({"name": name, "weights": weights, **kwargs})
        return TinyNet(**kwargs)

    def list_models(module: Any = None) -> list[str]:
        assert module is tv_models  # only the classification models are offered
        return ["mobilenet_v3_large", "resnet18", "resnet50"]

    tv_models.get_model = get_model  # type: ignore[attr-defined]
    tv_models.list_models = list_models  # type: ignore[attr-defined]
    torchvision = types.ModuleType("torchvision")
    torchvision.models = tv_models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    return calls


FACTORY_CODE = """
import torch
from torch import nn

not_callable = 3


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def make_net(width=4):
    return Net(width)


def returns_int():
    return 7


class Holder:
    make = staticmethod(make_net)
"""


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real package ``userpkg_ext`` on sys.path: ``nets`` (factories) and ``broken`` (fails on import)."""
    package = tmp_path / "userpkg_ext"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY_CODE)
    (package / "broken.py").write_text("raise ValueError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg_ext"
    for name in [n for n in sys.modules if n.startswith("userpkg_ext")]:
        del sys.modules[name]


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("timm:resnet50", ("timm", "resnet50", True)),
        ("timm:resnet50.a1_in1k", ("timm", "resnet50.a1_in1k", True)),
        ("timm:hf-hub:timm/resnet50.a1_in1k", ("timm", "hf-hub:timm/resnet50.a1_in1k", True)),
        ("torchvision:resnet18", ("torchvision", "resnet18", True)),
        ("mypkg.nets:make_net", ("mypkg.nets", "make_net", False)),
        ("mynets:Holder.make", ("mynets", "Holder.make", False)),
        ("preact_resnet18", None),
        ("runs/a:b", None),
        ("timm:", None),
        ("mypkg.nets:make-net", None),
    ],
)
def test_references_parse_to_a_library_or_a_factory(text: str, parsed: tuple[str, str, bool] | None) -> None:
    ref = parse_external(text)
    assert (None if ref is None else (ref.module, ref.attr, ref.library)) == parsed


# ----------------------------------------------------------------------------------------------- timm
def test_timm_model_is_wrapped_with_its_pretrained_cfg_normaliser(fake_timm: list[dict[str, Any]]) -> None:
    module, meta = ExternalSource("timm:tinynet", {"num_classes": 5}, pretrained=True).load(LoadOptions())
    assert isinstance(module, NormalizedModel) and type(module.model) is TinyNet and not module.training
    assert fake_timm == [{"name": "tinynet", "pretrained": True, "num_classes": 5}]
    x = _images()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in TIMM_MEAN_STD)
    torch.testing.assert_close(module(x), module.model((x - mean) / std))  # [0, 1] in, normalised inside
    assert meta == {
        "model": {
            "name": "timm:tinynet",
            "args": {"num_classes": 5},
            "external": {
                "pretrained": True,
                "normalize": {"mean": list(TIMM_MEAN_STD[0]), "std": list(TIMM_MEAN_STD[1])},
            },
        },
        "checkpoint": None,
    }
    assert [op.name for op in find_downsamplers(module, x)] == ["model.conv"]


def test_timm_without_pretrained_is_random_and_without_cfg_uses_imagenet(
    fake_timm: list[dict[str, Any]],
) -> None:
    module, meta = ExternalSource("timm:plainnet").load(LoadOptions())
    assert fake_timm == [{"name": "plainnet", "pretrained": False}]
    assert isinstance(module, NormalizedModel)
    x = _images()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_MEAN_STD)
    torch.testing.assert_close(module(x), module.model((x - mean) / std))
    assert meta["model"]["external"]["normalize"]["std"] == list(IMAGENET_MEAN_STD[1])


def test_unknown_timm_model_lists_close_matches(fake_timm: list[dict[str, Any]]) -> None:
    with pytest.raises(
        UnknownNameError, match=r"^unknown timm model 'resnet5'; close matches: resnet50, resnet18$"
    ):
        ExternalSource("timm:resnet5").load(LoadOptions())
    with pytest.raises(UnknownNameError, match=r"^unknown timm model 'zzz'; none of its 5 names is close$"):
        ExternalSource("timm:zzz").load(LoadOptions())


def test_timm_argument_it_refuses_is_a_model_argument_error(fake_timm: list[dict[str, Any]]) -> None:
    with pytest.raises(ModelArgumentError, match=r"^timm:tinynet refused its arguments \{'depth': 3\}: "):
        ExternalSource("timm:tinynet", {"depth": 3}).load(LoadOptions())


# ---------------------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize(("pretrained", "weights"), [(False, None), (True, "DEFAULT")])
def test_torchvision_model_gets_imagenet_normalisation_and_its_weights(
    fake_torchvision: list[dict[str, Any]], pretrained: bool, weights: str | None
) -> None:
    module, meta = ExternalSource("torchvision:resnet18", pretrained=pretrained).load(LoadOptions())
    assert isinstance(module, NormalizedModel) and type(module.model) is TinyNet and not module.training
    assert fake_torchvision == [{"name": "resnet18", "weights": weights}]
    x = _images()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_MEAN_STD)
    torch.testing.assert_close(module(x), module.model((x - mean) / std))
    assert meta["model"]["name"] == "torchvision:resnet18"
    assert meta["model"]["external"]["pretrained"] is pretrained


def test_unknown_torchvision_model_lists_close_matches(fake_torchvision: list[dict[str, Any]]) -> None:
    with pytest.raises(
        UnknownNameError,
        match=r"^unknown torchvision classification model 'resnet19'; close matches: resnet18",
    ):
        ExternalSource("torchvision:resnet19").load(LoadOptions())
    assert fake_torchvision == []


# -------------------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize(
    ("reference", "blocked", "message"),
    [
        ("timm:resnet50", "timm", "timm is not installed: pip install 'cnn-aliasing[timm]'"),
        (
            "torchvision:resnet18",
            "torchvision",
            "torchvision is not installed: pip install 'cnn-aliasing[vision]'",
        ),
    ],
)
def test_a_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, reference: str, blocked: str, message: str
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # import of it now fails as if it were not installed
    monkeypatch.delitem(sys.modules, f"{blocked}.models", raising=False)
    with pytest.raises(CnnAliasingError) as info:
        ExternalSource(reference).load(LoadOptions())
    assert str(info.value) == message


# ------------------------------------------------------------------------------------ the user's factory
def test_factory_model_is_taken_as_it_is_with_its_arguments_and_checkpoint(
    user_pkg: str, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    module: Any
    module, meta = ExternalSource(f"{user_pkg}.nets:make_net", {"width": 6}).load(LoadOptions())
    assert type(module).__name__ == "Net" and type(module).__module__ == f"{user_pkg}.nets"
    assert module.conv.out_channels == 6 and not module.training
    assert meta["model"] == {
        "name": f"{user_pkg}.nets:make_net",
        "args": {"width": 6},
        "external": {"pretrained": False, "normalize": None},
    }
    path = tmp_path / "net.pt"
    save_checkpoint(module, path)
    torch.manual_seed(4)  # other random weights, replaced by the checkpoint's
    loaded, meta = ExternalSource(f"{user_pkg}.nets:Holder.make", {"width": 6}, checkpoint=path).load(
        LoadOptions()
    )
    assert torch.equal(loaded.get_parameter("conv.weight"), module.conv.weight)
    assert meta["checkpoint"]["path"] == str(path.resolve())


@pytest.mark.parametrize(
    ("reference", "pattern"),
    [
        (
            "nets_nowhere.deep:make",
            r"^cannot import module 'nets_nowhere.deep' of --model nets_nowhere.deep:make: "
            r"ModuleNotFoundError: No module named 'nets_nowhere' \(is it installed, or on PYTHONPATH\?\)$",
        ),
        ("PKG.broken:make", r"^cannot import module 'PKG.broken' .*ValueError: broken on purpose"),
        (
            "PKG.nets:make_nett",
            r"^'PKG.nets' has no attribute 'make_nett' \(from --model PKG.nets:make_nett\); "
            r"close matches: make_net$",
        ),
        ("PKG.nets:Holder.mak", r"^'PKG.nets.Holder' has no attribute 'mak'"),
        ("PKG.nets:not_callable", r"^PKG.nets:not_callable is a int, not a callable returning an nn.Module"),
        ("PKG.nets:returns_int", r"^PKG.nets:returns_int returned a int, not a torch.nn.Module$"),
    ],
)
def test_a_bad_factory_names_what_is_wrong(user_pkg: str, reference: str, pattern: str) -> None:
    with pytest.raises(CnnAliasingError, match=pattern.replace("PKG", user_pkg)):
        ExternalSource(reference.replace("PKG", user_pkg)).load(LoadOptions())


def test_factory_refusing_its_arguments_or_pretrained(user_pkg: str) -> None:
    with pytest.raises(ModelArgumentError, match=r"refused its arguments \{'depth': 2\}: .*'depth'"):
        ExternalSource(f"{user_pkg}.nets:make_net", {"depth": 2}).load(LoadOptions())
    with pytest.raises(CnnAliasingError, match=r"^pretrained applies to timm: and torchvision: models"):
        ExternalSource(f"{user_pkg}.nets:make_net", pretrained=True).load(LoadOptions())


# ------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_layout(root, train_sizes=(2, 2, 2, 2, 2), test_size=8)
    return root


def _measure(capsys: pytest.CaptureFixture[str], cifar_dir: Path, out: Path, *model: str) -> tuple[int, str]:
    argv = ["measure", *model, "--data-dir", str(cifar_dir), "--n-images", "8", "--device", "cpu", "--quiet"]
    try:
        code = cli.main([*argv, "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


def test_measure_a_timm_model_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, fake_timm: list[dict[str, Any]]
) -> None:
    out = tmp_path / "r.json"
    code, err = _measure(
        capsys, cifar_dir, out, "--model", "timm:tinynet", "--pretrained", "--model-arg", "num_classes=10"
    )
    assert (code, err) == (0, "")
    report = json.loads(out.read_text())
    assert [op["name"] for op in report["ops"]] == ["model.conv"]
    assert report["meta"]["model"]["name"] == "timm:tinynet"
    assert fake_timm == [{"name": "tinynet", "pretrained": True, "num_classes": 10}]


def test_measure_a_factory_model_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, user_pkg: str
) -> None:
    out = tmp_path / "r.json"
    code, err = _measure(
        capsys, cifar_dir, out, "--model", f"{user_pkg}.nets:make_net", "--model-arg", "width=3"
    )
    assert (code, err) == (0, "")
    report = json.loads(out.read_text())
    assert [op["name"] for op in report["ops"]] == ["conv"] and report["ops"][0]["channels"] == 3


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (["--model", "timm:resnet50"], "timm is not installed: pip install 'cnn-aliasing[timm]'"),
        (
            ["--model", "preact_resnet18", "--pretrained"],
            "--pretrained applies to timm:NAME and torchvision:NAME",
        ),
        (["--model", "resnet9000"], "or timm:NAME, torchvision:NAME, package.module:factory"),
    ],
)
def test_command_line_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cifar_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: list[str],
    message: str,
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    code, err = _measure(capsys, cifar_dir, tmp_path / "r.json", *model)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------------------------------------ study
def _study(*entries: dict[str, Any]) -> Any:
    return parse_config({"models": list(entries)}, "s.toml", default_name="s")


def test_study_external_entry_expands_and_loads(tmp_path: Path, fake_timm: list[dict[str, Any]]) -> None:
    config = _study(
        {"external": "timm:tinynet", "pretrained": True, "args": {"num_classes": 10}},
        {"external": "timm:tinynet", "name": "robust-tiny", "robust": True},
    )
    first, second = expand_models(config.models, tmp_path)
    assert (first.name, first.arch, first.arch_args, first.robust) == (
        "timm:tinynet",
        "timm:tinynet",
        {"num_classes": 10},
        False,
    )
    assert first.source == {"type": "external", "external": "timm:tinynet", "pretrained": True}
    assert (second.name, second.robust, second.tags) == ("robust-tiny", True, ("robust", "timm:tinynet"))
    context = LoadContext(tmp_path, tmp_path, tmp_path, torch.device("cpu"), progress=False, seed=5)
    loaded = first.load(context)
    assert isinstance(loaded.module, NormalizedModel) and loaded.record["training"] is None
    assert loaded.record["source"]["normalize"] == {
        "mean": list(TIMM_MEAN_STD[0]),
        "std": list(TIMM_MEAN_STD[1]),
    }
    again = first.load(context)  # random weights follow the study's seed
    weights = [m.module.get_parameter("model.conv.weight") for m in (loaded, again)]
    assert torch.equal(*weights)
    assert fake_timm[0] == {"name": "tinynet", "pretrained": True, "num_classes": 10}


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"external": "resnet50"}, "s.toml: [[models]] #1 key external: 'resnet50' is not a model reference"),
        (
            {"external": "mypkg.nets:make_net", "pretrained": True},
            "pretrained applies to timm: and torchvision:",
        ),
        ({"external": "timm:resnet50", "weights": "x"}, "unknown key 'weights'; valid keys: external, args"),
    ],
)
def test_study_external_entry_errors(tmp_path: Path, entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(CnnAliasingError) as info:
        expand_models(_study(entry).models, tmp_path)
    assert needle in str(info.value)
