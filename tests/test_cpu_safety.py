"""Training never takes oneDNN's crashing channels_last path on the CPU (a child process must exit cleanly).

On AVX2-only CPUs (AMD EPYC, torch 2.13 CPU build) oneDNN's channels_last backward of a 1x1 stride-2
convolution with 2-4 input channels kills the interpreter (SIGSEGV or a heap-corruption abort). A width-4
PreAct ResNet-18 has exactly such shortcut convolutions, so it is trained in a child process: a crash there
shows as a signal exit code instead of taking the test run down.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from cnn_aliasing.runtime import use_channels_last

CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from cnn_aliasing.models import create_model
    from cnn_aliasing.training import Trainer, get_recipe

    torch.set_num_threads(1)
    channels_last = {"none": None, "true": True, "false": False}[sys.argv[1]]
    recipe = get_recipe(
        "small-standard", arch_args={"width": 4, "normalize": "cifar10"}, batch_size=16,
        channels_last=channels_last,
    )
    trainer = Trainer(recipe, create_model(recipe.arch, **recipe.arch_args), torch.device("cpu"))
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    labels = torch.arange(16) % 10
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        loss, _ = trainer.step(images, labels, 0.01, generator)
    print("channels_last", trainer.channels_last, "loss", float(loss))
    """
)


@pytest.mark.parametrize(
    ("setting", "runs_channels_last"), [("none", False), ("true", True), ("false", False)]
)
def test_a_width_4_model_trains_on_the_cpu_and_the_process_exits_cleanly(
    setting: str, runs_channels_last: bool
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, setting], capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, f"child exited with {child.returncode}: {child.stderr[-2000:]}"
    words = child.stdout.split()
    assert words[:2] == ["channels_last", str(runs_channels_last)]
    assert torch.isfinite(torch.tensor(float(words[3])))


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [(None, "cpu", False), (None, "cuda", True), (True, "cpu", True), (False, "cuda", False)],
)
def test_channels_last_is_chosen_per_device_with_the_recipe_as_override(
    requested: bool | None, device: str, expected: bool
) -> None:
    assert use_channels_last(requested, torch.device(device)) is expected
