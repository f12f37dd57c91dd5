"""Measurement and attacks under torchrun: two CPU processes with Gloo (started with torchrun's environment,
or by torchrun itself) give what one process gives, a state resumes with another number of ranks, and a
rank that dies or stalls ends the job with a clear error instead of a hang. Every launch has a hard
timeout, and each gets a free port of its own (pytest-xdist runs tests side by side)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import distributed_jobs as jobs
from attack_models import single_thread
from cifar_fixtures import make_layout
from cnn_aliasing import distributed
from cnn_aliasing.attacks.robust import _Cascade
from cnn_aliasing.errors import CnnAliasingError, DistributedError
from test_cli import PREACT, cifar_dir, run_cli  # noqa: F401 (cifar_dir is a fixture)

JOBS_SCRIPT = Path(__file__).with_name("distributed_jobs.py")
HARD_TIMEOUT_S = 120  # no launch may take longer, whatever goes wrong
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(job: str, out: Path, timeout_s: float = 30.0) -> list[tuple[int, str]]:
    """Run ``job`` of distributed_jobs.py in 2 processes with torchrun's environment (Gloo, collectives
    timing out after ``timeout_s``); each rank's (exit code, stderr). Ranks still running after
    :data:`HARD_TIMEOUT_S` are killed (exit code -9)."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            distributed.TIMEOUT_ENV: str(timeout_s),
        }
        command = [sys.executable, str(JOBS_SCRIPT), job, str(out)]
        procs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=HARD_TIMEOUT_S)
            results.append((proc.returncode, err))
    except subprocess.TimeoutExpired:
        for proc in procs[len(results) :]:
            proc.kill()
            results.append((proc.wait(), proc.stderr.read() if proc.stderr else ""))
    return results


# --------------------------------------------------------------------------------- one process, shards
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 4, 7, 13])
def test_shards_cover_every_item_once(n: int, world_size: int) -> None:
    contexts = [distributed.Context(rank, world_size) for rank in range(world_size)]
    ranges = [distributed.shard_range(n, c) for c in contexts]
    assert [i for r in ranges for i in r] == list(range(n))  # contiguous, in rank order, no overlap or loss
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    dealt = [distributed.shard_batches(n, c) for c in contexts]
    assert sorted(i for r in dealt for i in r) == list(range(n))
    rounds = distributed.rounds(n, contexts[0])
    assert max(map(len, dealt)) == rounds == math.ceil(n / world_size)
    for k in range(rounds):  # round k holds consecutive batches
        batches = [r[k] for r in dealt if k < len(r)]
        assert batches == list(range(k * world_size, min(n, (k + 1) * world_size)))


def test_one_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env("cpu") == distributed.current() == distributed.SINGLE
    assert not dist.is_initialized() and distributed.is_main()
    x = torch.tensor([1.5, 2.0], dtype=torch.float32)
    summed = distributed.all_reduce_sum(x)
    assert summed.dtype == torch.float64 and summed.tolist() == [1.5, 2.0] and summed is not x
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    distributed.barrier()
    assert distributed.SINGLE.meta() == {"world_size": 1, "backend": None}


def test_an_incomplete_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(DistributedError, match="CNN_ALIASING_DIST_TIMEOUT='soon' is invalid"):
        distributed.timeout_seconds()


# ------------------------------------------------------------------------------ two ranks, one answer
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each rank's results of the ``compare`` job."""
    out = tmp_path_factory.mktemp("compare")
    results = launch("compare", out)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal structure, integers and strings; floats within 1e-9 relative (NaN equals NaN)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-9) or (math.isnan(got) and math.isnan(want)), (
            f"{where}: {got!r} != {want!r}"
        )
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("kind", ["exact", "sampled"])
def test_measure_on_two_ranks_equals_one_process(two_ranks: list[dict[str, Any]], kind: str) -> None:
    options = jobs.EXACT if kind == "exact" else jobs.SAMPLED
    with single_thread():
        one = jobs.measure_shard(**options)
    assert one["meta"] == {"world_size": 1, "backend": None} and one["n_images"] == jobs.N_IMAGES
    assert two_ranks[0][kind] == two_ranks[1][kind]  # every rank ends with the same report
    two = two_ranks[0][kind]
    assert two["meta"] == {"world_size": 2, "backend": "gloo"}
    assert len(one["ops"]) == 2 and all(len(v) == jobs.N_IMAGES for v in one["per_image"].values())
    assert_close({**two, "meta": None}, {**one, "meta": None})  # per-image AM too, in image order


def test_robust_accuracy_on_two_ranks_equals_one_process(two_ranks: list[dict[str, Any]]) -> None:
    with single_thread():
        one = jobs.robust_fields(jobs.attack())
    assert (one["world_size"], one["backend"]) == (1, None)
    tensors = {name: one.pop(name) for name in ("clean_points", "robust_points", "margins", "adversarial")}
    for rank in two_ranks:
        two = dict(rank["robust"])
        assert (two["world_size"], two["backend"]) == (2, "gloo")
        for name, tensor in tensors.items():
            assert torch.equal(two.pop(name), tensor), name
        assert {**two, "world_size": 1, "backend": None} == one
    assert 0 < one["robust_accuracy"] < one["per_attack"][0]["robust_accuracy"] < one["clean_accuracy"] < 1


# ------------------------------------------------------------------------------------------ failures
class Counting:
    """Counts the attack batches run (patching _Cascade._attack_batch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = _Cascade._attack_batch

        def counted(cascade: _Cascade, *args: Any) -> Any:
            self.calls += 1
            return original(cascade, *args)

        monkeypatch.setattr(_Cascade, "_attack_batch", counted)


def test_a_killed_two_rank_run_resumes_on_one_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = launch("kill", tmp_path)
    assert results[1][0] == -9  # rank 1 killed itself in its second batch
    assert results[0][0] == 1 and "peer rank probably died" in results[0][1], results[0][1][-3000:]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert (saved["version"], saved["per_attack"], saved["batches_done"]) == (3, [], [0, 1])  # round 1 done
    with single_thread():
        counted = Counting(monkeypatch)
        resumed = jobs.robust_fields(jobs.attack(tmp_path / "state.json"))
        done_after_kill = counted.calls
        whole = jobs.robust_fields(jobs.attack())
    assert done_after_kill == counted.calls - done_after_kill - 2  # the 2 finished batches are not redone
    for name in ("clean_points", "robust_points", "margins", "adversarial"):
        assert torch.equal(resumed.pop(name), whole.pop(name)), name
    assert resumed == whole


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_rank_that_dies_or_stalls_ends_the_job_with_an_error(tmp_path: Path, how: str) -> None:
    timeout_s = 3.0
    results = launch(how, tmp_path, timeout_s=timeout_s)
    assert results[0][0] == 1, results[0][1][-3000:]
    assert results[1][0] == (-9 if how == "die" else 1)  # killed itself, or woke up to find rank 0 gone
    waited, message = (tmp_path / "error0.txt").read_text().split("\n", 1)
    assert (timeout_s <= float(waited) < timeout_s + 5) if how == "stall" else float(waited) < timeout_s
    assert "rank 0 of 2 (gloo): all_reduce failed, a peer rank probably died or stopped responding" in message
    assert "DistributedError" in results[0][1]


# ---------------------------------------------------------------------------------- the command line
def run_both(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[dict, dict]:
    """The JSON ``--out`` of ``cnn-aliasing ARGV`` under ``torchrun --standalone --nproc-per-node 2`` and in
    this process, after checking that the torchrun job succeeded with rank 0 alone writing."""
    command = [Path(sys.executable).with_name("torchrun"), "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*map(str, command), "-m", "cnn_aliasing", *argv, "--out", str(tmp_path / "two.json")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    with single_thread():
        code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "one.json"))
    assert code == 0, err
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert (two["meta"]["world_size"], two["meta"]["backend"]) == (2, "gloo")
    assert (one["meta"]["world_size"], one["meta"]["backend"]) == (1, None)
    assert two["meta"]["data"] == one["meta"]["data"]
    return two, one


def cli_args(command: str, data_dir: Path, *extra: str) -> list[str]:
    """``command`` on 7 fake CIFAR-10 images in batches of 2, quiet, on the CPU."""
    common = ["--data-dir", str(data_dir), "--n-images", "7", "--batch-size", "2", "--device", "cpu"]
    return [command, *PREACT, *common, "--quiet", *extra]


def test_torchrun_measure_writes_one_report_equal_to_one_process(
    cifar_dir: Path,  # noqa: F811 (a fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    two, one = run_both(capsys, tmp_path, *cli_args("measure", cifar_dir))
    assert two["n_images"] == 7 and len(two["ops"]) == 6
    assert_close(two["ops"], one["ops"])


def test_torchrun_evaluate_attack_equals_one_process(
    cifar_dir: Path,  # noqa: F811 (a fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    attack = ["--attack", "fgsm+pgd", "--eps", "1/255", "--state", str(tmp_path / "state.json")]
    two, one = run_both(capsys, tmp_path, *cli_args("evaluate", cifar_dir, *attack))
    assert (two["robust"]["world_size"], two["robust"]["backend"]) == (2, "gloo")
    for result in (two, one):
        del result["robust"]["elapsed"], result["robust"]["attack_seconds"], result["robust"]["world_size"]
        del result["robust"]["backend"]
    assert two["robust"] == one["robust"] and two["clean"] == one["clean"]
    assert one["robust"]["clean_accuracy"] > 0  # a point to attack


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def two_rank_steps(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each rank's per-step losses and final weights of the ``steps`` job."""
    out = tmp_path_factory.mktemp("steps")
    results = launch("steps", out)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    return [torch.load(out / f"steps{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize("objective", jobs.STEP_OBJECTIVES)
def test_two_rank_training_steps_equal_one_process_with_the_same_global_batch(
    two_rank_steps: list[dict[str, Any]], objective: str
) -> None:
    """17 images in global batches of 7 (slices of 4 + 3, 4 + 3, 2 + 1): each step's loss over the global
    batch and the weights after the epoch equal one process's to float tolerance. The model has no
    BatchNorm: without SyncBatchNorm (CUDA only) each rank would normalise over its own slice."""
    with single_thread():
        one_steps, one_weights = jobs.train_steps(objective)
    assert [n for _, n in one_steps] == [7, 7, 3]
    (steps0, weights0), (steps1, weights1) = (rank[objective] for rank in two_rank_steps)
    assert [n for _, n in steps0] == [4, 4, 2] and [n for _, n in steps1] == [3, 3, 1]
    for (one_loss, n), (loss0, _), (loss1, _) in zip(one_steps, steps0, steps1, strict=True):
        assert math.isclose((loss0 + loss1) / n, one_loss / n, rel_tol=1e-6), (loss0, loss1, one_loss)
    for name, tensor in one_weights.items():
        assert torch.equal(weights0[name], weights1[name]), name  # DDP keeps the ranks in step
        torch.testing.assert_close(weights0[name], tensor, rtol=1e-5, atol=1e-6)
    assert one_weights["3.weight"].ne(jobs.tiny_cnn(seed=7).state_dict()["3.weight"]).any()  # it did train


def test_a_step_that_leaves_a_rank_without_images_is_refused() -> None:
    from cnn_aliasing.training.loop import check_batches_fill_ranks

    check_batches_fill_ranks(17, 7, 2)
    for n, batch in [(15, 7), (17, 1)]:  # a last batch of 1; batches of 1
        with pytest.raises(CnnAliasingError, match="step of 1 image\\(s\\) cannot be shared by 2 ranks"):
            check_batches_fill_ranks(n, batch, 2)


def test_sync_batchnorm_off_cuda_is_refused_with_several_ranks() -> None:
    from cnn_aliasing.training import Trainer

    context = distributed.Context(0, 2, 0, "gloo")
    with pytest.raises(CnnAliasingError, match=r"sync_batchnorm .* needs CUDA devices"):
        Trainer(
            jobs.step_recipe("standard"),
            jobs.tiny_cnn(),
            torch.device("cpu"),
            context=context,
            sync_batchnorm=True,
        )


@pytest.fixture
def train_dir(tmp_path: Path) -> Path:
    """``tmp_path/data``: 64 fake train images and 8 test images."""
    make_layout(tmp_path / "data", train_sizes=(16, 16, 16, 8, 8), test_size=8)
    return tmp_path


def test_a_run_written_by_two_ranks_resumes_on_one(train_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = launch("train_stop", train_dir)
    assert all(code != 0 and "KeyboardInterrupt" in err for code, err in results), results[0][1][-3000:]
    assert [(train_dir / f"writes{r}.txt").read_text() for r in range(2)] == ["1", "0"]  # rank 0 alone
    saved = json.loads((train_dir / "run" / "model.json").read_text())
    assert (saved["epochs_done"], saved["world_size"], saved["backend"]) == (1, 2, "gloo")
    assert saved["history"][0]["eval"] is not None  # tracked on rank 0
    from cnn_aliasing.training import Trainer

    epochs: list[int] = []
    run_epoch = Trainer.run_epoch

    def counted(self: Trainer, epoch: int, *args: Any, **kwargs: Any) -> Any:
        epochs.append(epoch)
        return run_epoch(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", counted)
    with single_thread():
        result = jobs.train_run(train_dir)
    assert epochs == [1]  # only the second epoch was left
    assert [(h["epoch"], h["world_size"]) for h in result.history] == [(1, 2), (2, 1)]
    assert (result.sidecar["world_size"], result.sidecar["backend"], result.sidecar["complete"]) == (
        1,
        None,
        True,
    )
    assert result.history[0] == saved["history"][0]


def test_a_killed_rank_ends_training_with_an_error(train_dir: Path) -> None:
    timeout_s = 20.0
    results = launch("train_die", train_dir, timeout_s=timeout_s)
    assert results[1][0] == -9  # killed itself in its second step
    assert results[0][0] == 1, results[0][1][-3000:]
    waited, message = (train_dir / "error0.txt").read_text().split("\n", 1)
    assert float(waited) < timeout_s + 10
    assert "rank 0 of 2 (gloo): training step" in message and "a peer rank probably died" in message
    assert "DistributedError" in results[0][1]
    assert not (train_dir / "run" / "model.json").exists()  # no epoch finished
