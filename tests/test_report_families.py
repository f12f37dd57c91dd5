"""cnn_aliasing.report.families: which ops the metric zero-pads, and the warning for mixed-family studies."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from cnn_aliasing.report import families
from cnn_aliasing.report.families import (
    EDGE_BIAS_RANDOM,
    EDGE_BIAS_TRAINED,
    family_warning,
    is_zero_padded,
    model_padding,
    padded_ops,
)
from cnn_aliasing.report.results import ModelResult, OpResult

# (name, full size) of the ops of the real models, as find_downsamplers reports them for 32x32 inputs
DM_WRN = [
    ("layer.1.block.0.conv_0", (31, 31)),
    ("layer.1.block.0.shortcut", (32, 32)),
    ("layer.2.block.0.conv_0", (15, 15)),
    ("layer.2.block.0.shortcut", (16, 16)),
]
WRN = [
    ("block2.layer.0.conv1", (32, 32)),
    ("block2.layer.0.convShortcut", (32, 32)),
    ("block3.layer.0.conv1", (16, 16)),
    ("block3.layer.0.convShortcut", (16, 16)),
]
DM_PREACT = [
    ("layer_1.0.shortcut", (31, 31)),
    ("layer_1.0.conv_2d_1", (31, 31)),
    ("layer_2.0.shortcut", (15, 15)),
    ("layer_2.0.conv_2d_1", (15, 15)),
    ("layer_3.0.shortcut", (7, 7)),
    ("layer_3.0.conv_2d_1", (7, 7)),
]


def model(
    name: str,
    arch: str | None,
    ops: list[tuple[str, tuple[int, int]]],
    *,
    status: str = "done",
    sizes_known: bool = True,
) -> ModelResult:
    return ModelResult(
        name=name,
        file=f"models/{name}.json",
        status=status,
        error=None,
        robust=False,
        arch=arch,
        tags=[],
        source={},
        ops=[
            OpResult(op, "conv2d", (2, 2), 1.0, 0.5, 10, full_size=size if sizes_known else None)
            for op, size in ops
        ],
    )


def test_is_zero_padded_known_cases() -> None:
    assert is_zero_padded((31, 31), (2, 2))
    assert is_zero_padded((32, 31), (2, 2))
    assert is_zero_padded((7, 7), (2, 2))
    assert is_zero_padded((32, 32), (3, 3))  # 32 is not a multiple of 3
    assert not is_zero_padded((32, 32), (2, 2))
    assert not is_zero_padded((16, 16), (4, 4))
    assert not is_zero_padded((31, 32), (1, 2))  # a factor-1 axis is never padded
    assert is_zero_padded((32, 31), (1, 2))
    with pytest.raises(ValueError, match="pairs"):
        is_zero_padded((32,), (2, 2))


def test_padded_ops_keeps_order_and_names_missing_factors() -> None:
    sizes = dict(DM_WRN)
    factors = dict.fromkeys(sizes, (2, 2))
    assert padded_ops(sizes, factors) == ["layer.1.block.0.conv_0", "layer.2.block.0.conv_0"]
    assert padded_ops(dict(WRN), dict.fromkeys(dict(WRN), (2, 2))) == []
    with pytest.raises(ValueError, match=r"layer\.2\.block\.0\.shortcut"):
        padded_ops(sizes, {k: v for k, v in factors.items() if k != "layer.2.block.0.shortcut"})


def test_model_padding_reads_full_sizes() -> None:
    p = model_padding(model("dm", "dm_wrn_28_10", DM_WRN))
    assert p.known and p.is_padded and p.n_ops == 4
    assert p.padded == ("layer.1.block.0.conv_0", "layer.2.block.0.conv_0")
    assert p.sizes == (((31, 31), (32, 32)), ((15, 15), (16, 16)))
    assert not model_padding(model("twin", "wrn_28_10", WRN)).is_padded


def test_model_padding_without_sizes_falls_back_on_the_architecture() -> None:
    dm = model_padding(model("dm", "dm_preact_resnet18", DM_PREACT, sizes_known=False))
    assert not dm.known and dm.is_padded and dm.sizes == ()
    twin = model_padding(model("twin", "preact_resnet18", DM_PREACT, sizes_known=False))
    assert not twin.known and not twin.is_padded


def test_warning_for_a_mixed_study_names_models_sizes_bias_and_advice() -> None:
    text = family_warning(
        [
            model("Gowal2020", "dm_wrn_28_10", DM_WRN),
            model("Rebuffi2021", "dm_wrn_28_10", DM_WRN),
            model("Carmon2019", "wrn_28_10", WRN),
        ],
        trained_bias=(20.0, 40.0),
        random_bias=(3.0, 3.4),
    )
    assert text is not None
    assert text.startswith("AM of dm_wrn_28_10 models (Gowal2020, Rebuffi2021;")
    assert "stride-1 outputs 31x31, 15x15 zero-padded to 32x32, 16x16, at 2 of 4 ops" in text
    assert "+20 to +40% at those ops in trained models and +3% at random weights" in text
    assert "The other models (wrn_28_10)" in text
    assert "compare the padded models with their own family only" in text
    assert "docs/metric.md" in text


def test_warning_groups_several_padded_architectures() -> None:
    text = family_warning(
        [
            model("a", "dm_preact_resnet18", DM_PREACT),
            model("b", "dm_wrn_28_10", DM_WRN),
            model("c", "preact_resnet18", [(n, (32, 32)) for n, _ in DM_PREACT]),
        ]
    )
    assert text is not None
    assert "dm_preact_resnet18 models (a; stride-1 outputs 31x31, 15x15, 7x7 zero-padded to 32x32, " in text
    assert "16x16, 8x8, at 6 of 6 ops)" in text
    assert "; dm_wrn_28_10 models (b;" in text


def test_no_warning_within_one_family_or_without_finished_models() -> None:
    assert family_warning([]) is None
    assert family_warning([model("a", "wrn_28_10", WRN), model("b", "wrn_28_10", WRN)]) is None
    assert family_warning([model("a", "dm_wrn_28_10", DM_WRN), model("b", "dm_wrn_28_10", DM_WRN)]) is None
    # a failed model of the other family does not count
    mixed_but_failed = [model("a", "dm_wrn_28_10", DM_WRN), model("b", "wrn_28_10", WRN, status="failed")]
    assert family_warning(mixed_but_failed) is None


def test_warning_for_results_without_sizes() -> None:
    text = family_warning(
        [
            model("dm", "dm_wrn_28_10", DM_WRN, sizes_known=False),
            model("twin", "wrn_28_10", WRN, sizes_known=False),
        ]
    )
    assert text is not None and "sizes not recorded" in text and "dm_wrn_28_10 models (dm;" in text


def test_default_bias_is_the_measured_one() -> None:
    for low, high in (EDGE_BIAS_TRAINED, EDGE_BIAS_RANDOM):
        assert 0 < low <= high
    text = family_warning([model("a", "dm_wrn_28_10", DM_WRN), model("b", "wrn_28_10", WRN)])
    assert text is not None and f"+{EDGE_BIAS_TRAINED[0]:.0f}" in text


def test_module_imports_neither_torch_nor_numpy() -> None:
    tree = ast.parse(Path(families.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "cnn_aliasing"}
    # its one import of the package is for annotations only
    runtime = [
        n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "cnn_aliasing.report.results"
    ]
    assert runtime == []


def test_padded_size_is_the_next_multiple_of_the_factor() -> None:
    m = model("m", None, [])
    m.ops = [
        OpResult("pool", "max_pool2d", (4, 4), 1.0, 0.5, 10, full_size=(30, 29)),
        OpResult("conv", "conv2d", (2, 2), 1.0, 0.5, 10, full_size=(31, 32)),
        OpResult("slice", "strided_slice", (1, 3), 1.0, 0.5, 10, full_size=(7, 7)),
    ]
    assert model_padding(m).sizes == (((30, 29), (32, 32)), ((31, 32), (32, 32)), ((7, 7), (7, 9)))


def test_the_report_answer_ends_with_the_family_warning(tmp_path: Path) -> None:
    from cnn_aliasing.report.results import StudyResults
    from cnn_aliasing.report.statistics import compute_statistics

    def study(*models: ModelResult) -> StudyResults:
        return StudyResults(tmp_path, "s", {}, None, {}, None, list(models), [])

    mixed = study(model("a", "dm_wrn_28_10", DM_WRN), model("b", "wrn_28_10", WRN))
    answer = compute_statistics(mixed, n_resamples=10).answer
    assert answer[-1] == family_warning(mixed.models)
    alone = compute_statistics(study(model("b", "wrn_28_10", WRN)), n_resamples=10).answer
    assert not any("zero-padded" in line for line in alone)
