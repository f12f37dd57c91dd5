"""The model zoo: its data, loading checkpoints in RobustBench's layout, and downloading them (faked)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from cnn_aliasing import zoo
from cnn_aliasing.errors import CheckpointError, UnknownNameError
from cnn_aliasing.models import create_model, save_checkpoint

REQUIRED = [
    "Standard",
    "Carmon2019Unlabeled",
    "Sehwag2020Hydra",
    "Wang2020Improving",
    "Hendrycks2019Using",
    "Wu2020Adversarial_extra",
    "Zhang2020Geometry",
    "Sridhar2021Robust",
    "Gowal2020Uncovering_28_10_extra",
    "Gowal2021Improving_28_10_ddpm_100m",
    "Rebuffi2021Fixing_28_10_cutmix_ddpm",
    "Rade2021Helper_ddpm",
    "Wong2020Fast",
    "Andriushchenko2020Understanding",
    "Rebuffi2021Fixing_R18_ddpm",
    "Rade2021Helper_R18_ddpm",
    "Gowal2021Improving_R18_ddpm_100m",
    "Sehwag2021Proxy_R18",
]
# parameter counts of RobustBench's classes for these architectures (sub_block1 adds a copy of block1)
PARAMETERS = {
    ("wrn_28_10", False): 36_479_194,
    ("wrn_28_10", True): 38_119_866,
    ("dm_wrn_28_10", False): 36_479_194,
    ("preact_resnet18", False): 11_171_146,
    ("dm_preact_resnet18", False): 12_548_426,
    ("resnet18", False): 11_173_962,
}
GDRIVE_HTML = (
    b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
    b"<body>Google Drive can't scan this file for viruses.</body></html>"
)


# ----------------------------------------------------------------------------------------------- registry
def test_the_required_entries_are_in_the_zoo() -> None:
    assert set(REQUIRED) <= set(zoo.ZOO)
    assert len(zoo.ZOO) == 25


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_entry_builds_its_architecture_with_the_reference_parameter_count(name: str) -> None:
    entry = zoo.zoo_entry(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = entry.build()
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMETERS[(entry.arch, bool(entry.arch_args.get("sub_block1")))]


def test_entries_hold_consistent_facts() -> None:
    entries = zoo.select()
    assert len({e.gdrive_id for e in entries}) == len(entries)
    for e in entries:
        assert 0 <= e.autoattack_acc < e.clean_acc <= 100
        assert e.training in zoo.TRAININGS and e.paper.url.startswith("https://")
        assert str(e.relative_path) == f"cifar10/Linf/{e.name}.pt"
        assert e.download_url == f"https://drive.google.com/uc?id={e.gdrive_id}"
        json.dumps(e.to_dict())
    carmon = zoo.zoo_entry("Carmon2019Unlabeled")
    assert (carmon.clean_acc, carmon.autoattack_acc) == (89.69, 59.53)
    assert carmon.to_dict()["reported"] == {"clean_acc": 89.69, "autoattack_acc": 59.53}
    assert zoo.zoo_entry("Hendrycks2019Using").normalization == "pm1"
    assert zoo.zoo_entry("Gowal2020Uncovering_28_10_extra").normalization == "cifar10"
    assert zoo.zoo_entry("Standard").normalization == "none"
    with pytest.raises(TypeError):
        carmon.arch_args["sub_block1"] = False  # type: ignore[index]


def test_select_by_tags() -> None:
    wrn = zoo.select("wrn-28-10")
    assert len(wrn) == 16 and all(e.family == "wrn-28-10" for e in wrn)
    assert [e.name for e in zoo.select("standard")] == ["Standard"]
    assert [e.name for e in zoo.select("ROBUST", "dm_preact_resnet18")] == [
        "Rebuffi2021Fixing_R18_ddpm",
        "Rade2021Helper_R18_ddpm",
        "Rade2021Helper_R18_extra",
        "Gowal2021Improving_R18_ddpm_100m",
    ]
    assert len(zoo.select("preact-resnet-18")) == 6 and len(zoo.select("resnet-18")) == 3
    every = [entry.name for entry in zoo.select()]  # the data's order, grouped by architecture
    assert (
        every[:3] == ["Standard", "Carmon2019Unlabeled", "Sehwag2020Hydra"]
        and sorted(every) == zoo.ZOO.names()
    )
    assert [e.name for e in zoo.select("Resnet-18")] == [e.name for e in zoo.TAGS.get("resnet-18")]
    assert zoo.TAGS.describe()["resnet-18"] == "3 zoo models"
    assert {"robust", "standard", "wrn-28-10", "preact-resnet-18", "resnet-18", "dm_wrn_28_10"} <= set(
        zoo.zoo_tags()
    )


def test_unknown_names_and_tags_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"'Carmon2019'.*Carmon2019Unlabeled"):
        zoo.zoo_entry("Carmon2019")
    with pytest.raises(UnknownNameError, match=r"^unknown zoo tag 'WRN-34-10'; valid tags: .*wrn-28-10"):
        zoo.select("robust", "WRN-34-10")  # named as given


# ----------------------------------------------------------------------------------- loading from a folder
def write_checkpoint(model_dir: Path, name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Save a freshly seeded instance of zoo model ``name`` where RobustBench would; return its state."""
    torch.manual_seed(seed)
    model = zoo.zoo_entry(name).build()
    save_checkpoint(model, zoo.checkpoint_path(name, model_dir))
    return model.state_dict()


def assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


# one entry per architecture: WRN (with sub_block1), DM WRN, PreAct (normalised), DM PreAct, ResNet
@pytest.mark.parametrize(
    "name",
    [
        "Carmon2019Unlabeled",
        "Gowal2020Uncovering_28_10_extra",
        "Wong2020Fast",
        "Rebuffi2021Fixing_R18_ddpm",
        "Sehwag2021Proxy_R18",
    ],
)
def test_a_saved_checkpoint_loads_by_name_from_a_robustbench_folder(tmp_path: Path, name: str) -> None:
    state = write_checkpoint(tmp_path, name)
    model = zoo.load_zoo_model(name, tmp_path)
    assert_same_state(model, state)
    assert not model.training and type(model) is type(zoo.zoo_entry(name).build())


def test_a_data_parallel_checkpoint_wrapped_in_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = create_model("preact_resnet18").state_dict()
    path = zoo.checkpoint_path("Wong2020Fast", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 30}, path)
    assert_same_state(zoo.load_zoo_model("Wong2020Fast", tmp_path), state)


def test_andriushchenko_layout_last_item_and_alias_keys(tmp_path: Path) -> None:
    """The file holds {"last", "best"}; each state also has model_preact_hl1.* aliases of conv1 and a BN."""
    torch.manual_seed(3)
    last, best = create_model("preact_resnet18").state_dict(), create_model("preact_resnet18").state_dict()

    def with_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bn = {k.removeprefix("layer1.0.bn1."): v for k, v in state.items() if k.startswith("layer1.0.bn1.")}
        aliases = {f"model_preact_hl1.2.{k}": v for k, v in bn.items()}
        return {**state, "model_preact_hl1.1.weight": state["conv1.weight"], **aliases}

    path = zoo.checkpoint_path("Andriushchenko2020Understanding", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"last": with_aliases(last), "best": with_aliases(best)}, path)
    assert_same_state(zoo.load_zoo_model("Andriushchenko2020Understanding", tmp_path), last)

    torch.save(with_aliases(last), path)  # no "last" item: named in the error
    with pytest.raises(CheckpointError, match=r"no item 'last'"):
        zoo.load_zoo_model("Andriushchenko2020Understanding", tmp_path)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(create_model("preact_resnet18"), zoo.checkpoint_path("Sehwag2021Proxy_R18", tmp_path))
    with pytest.raises(CheckpointError, match=r"Sehwag2021Proxy_R18\.pt does not match the model"):
        zoo.load_zoo_model("Sehwag2021Proxy_R18", tmp_path)


def test_missing_checkpoint_offline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        zoo.load_zoo_model("Carmon2019Unlabeled", tmp_path / "models")
    message = str(caught.value)
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in message
    assert "download=True" in message and "--download-weights" in message and "cnn-aliasing[zoo]" in message
    assert zoo.zoo_entry("Carmon2019Unlabeled").download_url in message
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------------------------------------- download
NAME = "Sehwag2021Proxy_R18"


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a valid checkpoint of NAME (seed 4)."""
    folder = tmp_path_factory.mktemp("weights")
    write_checkpoint(folder, NAME, seed=4)
    return zoo.checkpoint_path(NAME, folder).read_bytes()


class FakeDownloader:
    """Writes ``payload`` (then raises ``error``, if given) instead of fetching from Google Drive."""

    def __init__(self, payload: bytes, error: BaseException | None = None) -> None:
        self.payload, self.error = payload, error
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, gdrive_id: str, destination: Path) -> None:
        self.calls.append((gdrive_id, destination))
        destination.write_bytes(self.payload)
        if self.error is not None:
            raise self.error


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_download_success_places_the_file_and_loads_it(tmp_path: Path, valid_bytes: bytes) -> None:
    fake = FakeDownloader(valid_bytes)
    model = zoo.load_zoo_model(NAME, tmp_path, download=True, downloader=fake, progress=False)
    assert [gdrive_id for gdrive_id, _ in fake.calls] == [zoo.zoo_entry(NAME).gdrive_id]
    assert fake.calls[0][1].parent.parent == tmp_path / "cifar10" / "Linf"  # a private folder beside it
    assert files_under(tmp_path) == ["cifar10", "cifar10/Linf", f"cifar10/Linf/{NAME}.pt"]
    assert zoo.checkpoint_path(NAME, tmp_path).read_bytes() == valid_bytes
    torch.manual_seed(4)
    assert_same_state(model, zoo.zoo_entry(NAME).build().state_dict())
    zoo.load_zoo_model(NAME, tmp_path, download=True, downloader=fake)  # present: no second download
    assert len(fake.calls) == 1
    assert zoo.download_checkpoint(NAME, tmp_path, downloader=fake) == zoo.checkpoint_path(NAME, tmp_path)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("html page", ("HTML", "was deleted")),
        ("truncated file", ("truncated", "was deleted")),
        ("interrupted download", ("ConnectionError", "connection reset", "nothing was kept")),
        ("other architecture", ("does not match the model", "was deleted")),
    ],
)
def test_a_bad_download_is_reported_and_never_left_in_place(
    tmp_path: Path, valid_bytes: bytes, case: str, needles: tuple[str, ...]
) -> None:
    if case == "other architecture":
        torch.manual_seed(0)
        save_checkpoint(create_model("preact_resnet18", width=8), tmp_path / "other.pt")
        fake = FakeDownloader((tmp_path / "other.pt").read_bytes())
        (tmp_path / "other.pt").unlink()
    else:
        fake = {
            "html page": FakeDownloader(GDRIVE_HTML),
            "truncated file": FakeDownloader(valid_bytes[: len(valid_bytes) // 2]),
            "interrupted download": FakeDownloader(
                valid_bytes[:1000], ConnectionError("connection reset by peer")
            ),
        }[case]
    with pytest.raises(CheckpointError) as caught:
        zoo.load_zoo_model(NAME, tmp_path, download=True, downloader=fake, progress=False)
    message = str(caught.value)
    assert message.startswith(f"download of {NAME} from https://drive.google.com/uc?id=")
    assert all(needle in message for needle in needles), message
    assert files_under(tmp_path) == ["cifar10", "cifar10/Linf"]


def test_ctrl_c_during_a_download_leaves_nothing(tmp_path: Path, valid_bytes: bytes) -> None:
    fake = FakeDownloader(valid_bytes[:1000], KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        zoo.download_checkpoint(NAME, tmp_path, downloader=fake)
    assert files_under(tmp_path) == ["cifar10", "cifar10/Linf"]


def test_without_gdown_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown raises ImportError
    with pytest.raises(CheckpointError, match=r"needs the gdown package: pip install 'cnn-aliasing\[zoo\]'"):
        zoo.load_zoo_model(NAME, tmp_path, download=True)


def test_gdown_is_called_with_the_drive_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, valid_bytes: bytes
) -> None:
    calls = []

    def download(*, id: str, output: str, quiet: bool) -> str:
        calls.append((id, output, quiet))
        Path(output).write_bytes(valid_bytes)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    path = zoo.download_checkpoint(NAME, tmp_path, progress=False)
    assert path == tmp_path / "cifar10" / "Linf" / f"{NAME}.pt" and path.read_bytes() == valid_bytes
    [(gdrive_id, output, quiet)] = calls
    assert gdrive_id == zoo.zoo_entry(NAME).gdrive_id and output.endswith(f"{NAME}.pt") and quiet
