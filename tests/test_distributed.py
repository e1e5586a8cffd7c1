"""Data-parallel training for real: torchrun starts 2 CPU processes that talk over gloo."""

import gc
import json
import os
import signal
import subprocess
import sys
import types
import weakref

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from capsnet.training import load_checkpoint
from capsnet.training.distributed import DistributedContext, init_distributed, shutdown_distributed

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def train_command(processes: int, run_dir, shared_data, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
    argv = ["capsnet", "train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-test", "100",
            "--no-progress", "--output-dir", str(run_dir), *extra]
    return launcher + argv if processes > 1 else [sys.executable, "-m", *argv]


def capsnet_train(processes: int, run_dir, shared_data, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(processes, run_dir, shared_data, *extra), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_parameters(run_a, run_b):
    a, b = load_checkpoint(run_a / "last.pt"), load_checkpoint(run_b / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"]
    steps, differing, total = a["progress"]["step"], 0, 0
    for name, value in a["model"].items():
        # Adam's steps are ~lr * sign(gradient): where a gradient is ~0, differently ordered sums can flip its sign
        # and move that weight by up to 2 * lr per step. Almost every weight must agree to float rounding; counted
        # over the whole model, since one flipped element of a 32-element bias is already 3% of that tensor.
        difference = (b["model"][name] - value).abs()
        assert difference.max() <= 2 * 1e-3 * steps, f"{name} differs by {difference.max()}"
        differing, total = differing + int((difference > 2e-5).sum()), total + difference.numel()
    assert differing <= 1e-3 * total, f"{differing} of {total} weights differ"


def assert_equal_parameters(run_a, run_b):
    """The same number of processes computes the same sums in the same order: equal to the last bit."""
    a, b = load_checkpoint(run_a / "last.pt"), load_checkpoint(run_b / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"]
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name


def test_two_ranks_of_batch_b_take_the_step_of_one_process_with_batch_2b(tmp_path, shared_data):
    one_step = ("--limit-train", "32", "--batch-size", "32", "--epochs", "1")
    capsnet_train(1, tmp_path / "one", shared_data, *one_step)
    two = capsnet_train(2, tmp_path / "two", shared_data, *one_step)
    assert_same_parameters(tmp_path / "one", tmp_path / "two")
    assert metrics(tmp_path / "one")[0]["test_error"] == pytest.approx(metrics(tmp_path / "two")[0]["test_error"], abs=0.011)
    assert two.stdout.count("epoch 1/1") == 1  # rank 0 alone reports
    assert "x 2 processes" in two.stdout


def test_two_ranks_start_from_init_from_weights_as_one_process_does(tmp_path, shared_data):
    one_step = ("--limit-train", "32", "--batch-size", "32", "--epochs", "1")
    capsnet_train(1, tmp_path / "source", shared_data, *one_step, "--seed", "1")  # weights unlike seed 0's
    start_there = ("--init-from", str(tmp_path / "source"))
    capsnet_train(1, tmp_path / "one", shared_data, *one_step, *start_there)
    two = capsnet_train(2, tmp_path / "two", shared_data, *one_step, *start_there)
    assert_same_parameters(tmp_path / "one", tmp_path / "two")
    assert two.stdout.count(f"starting from the weights of {tmp_path / 'source'}") == 1


def test_resumed_two_rank_run_matches_an_uninterrupted_single_process(tmp_path, shared_data):
    quick = ("--limit-train", "80", "--batch-size", "32")  # 3 steps an epoch, the last of 16 images
    capsnet_train(1, tmp_path / "one", shared_data, *quick, "--epochs", "2")
    capsnet_train(2, tmp_path / "two", shared_data, *quick, "--epochs", "1")
    capsnet_train(2, tmp_path / "two", shared_data, *quick, "--epochs", "2", "--resume")
    assert_same_parameters(tmp_path / "one", tmp_path / "two")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["epoch"] for m in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["test_error"] == pytest.approx(b["test_error"], abs=0.011)  # at most one of the 100 test images
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=0.013)  # one of the 80 examples
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_resumed_two_rank_run_keeps_every_ranks_dropout_masks(tmp_path, shared_data):
    quick = ("--model", "baseline-cnn-tiny", "--limit-train", "64", "--batch-size", "32")
    capsnet_train(2, tmp_path / "straight", shared_data, *quick, "--epochs", "2")
    capsnet_train(2, tmp_path / "resumed", shared_data, *quick, "--epochs", "1")
    capsnet_train(2, tmp_path / "resumed", shared_data, *quick, "--epochs", "2", "--resume")
    assert_equal_parameters(tmp_path / "straight", tmp_path / "resumed")


def test_sigterm_to_a_two_rank_run_saves_every_ranks_state_and_resumes_exactly(tmp_path, shared_data):
    quick = ("--limit-train", "2048", "--batch-size", "32", "--epochs", "3")  # 64 steps an epoch
    capsnet_train(2, tmp_path / "straight", shared_data, *quick)
    job = subprocess.Popen(train_command(2, tmp_path / "stopped", shared_data, *quick), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = ""
    while "epoch 1/3" not in output:  # mid-run however fast the machine: epoch 1 is done, 2 and 3 are not
        output += job.stdout.readline() or pytest.fail(output)
    os.killpg(job.pid, signal.SIGTERM)  # as a scheduler stops a job: torchrun and both workers get it
    output += job.communicate(timeout=120)[0]
    assert job.returncode != 0 and "interrupted by SIGTERM: checkpoint saved" in output, output
    checkpoint = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert len(checkpoint["rng"]) == 2 and checkpoint["progress"]["epoch"] < 3
    capsnet_train(2, tmp_path / "stopped", shared_data, *quick, "--resume")
    assert_equal_parameters(tmp_path / "straight", tmp_path / "stopped")


def test_without_torchrun_the_run_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed(torch.device("cpu"))
    assert context == DistributedContext() and context.is_main and not context.enabled
    x = torch.arange(5)
    assert context.shard(x) is x and context.sum_(x) is x and context.any(True) and not context.any(False)


def test_shards_cover_a_batch_in_order_and_differ_in_size_by_at_most_one():
    batch = torch.arange(7)
    shards = [DistributedContext(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 4], [5, 6]]


def test_runs_in_one_nccl_process_share_one_gloo_control_group(monkeypatch):
    # capsnet reproduce trains several rows in one torchrun process; each new_group opens sockets to every rank
    created = []
    group = types.SimpleNamespace(WORLD=object())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "group", group)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "new_group", lambda backend: created.append(backend) or object())
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    try:
        first, second = init_distributed(torch.device("cpu")), init_distributed(torch.device("cpu"))
        assert created == ["gloo"] and first.control_group is second.control_group
        assert (first.rank, first.world_size) == (1, 2)
        group.WORLD = object()  # the process group was destroyed and made anew: a control group of its own
        assert init_distributed(torch.device("cpu")).control_group is not first.control_group
        assert created == ["gloo", "gloo"]
    finally:
        shutdown_distributed()  # forgets the fake groups


def test_shutdown_frees_a_ddp_wrapper_left_in_a_reference_cycle(tmp_path):
    # Left for the interpreter's last collection, the wrapper's gloo group aborted a torchrun worker at exit (CI).
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    finished_run = types.SimpleNamespace(model=DistributedDataParallel(nn.Linear(2, 2)))
    finished_run.itself = finished_run
    wrapper = weakref.ref(finished_run.model)
    del finished_run
    gc.disable()  # no collection by chance: only shutdown's may free it
    try:
        assert wrapper() is not None
        shutdown_distributed()
        assert wrapper() is None and not dist.is_initialized()
    finally:
        gc.enable()
        shutdown_distributed()


def test_more_processes_than_gpus_is_refused_with_the_counts(monkeypatch):
    from capsnet.training import TrainingError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TrainingError, match="started process 1 of this machine, but it has 1 GPUs: --nproc-per-node"):
        init_distributed(torch.device("cuda"))
