"""The training app on real MNIST: end-to-end accuracy, exact resume, interruption and divergence."""

import errno
import json
import math
import os
import signal
import warnings

import pytest
import torch

import capsnet
from capsnet import TrainConfig, Trainer, create_model
from capsnet import cli
from capsnet.cli import main
from capsnet.config import reaches_error
from capsnet.data.testsets import load_test_set
from capsnet.training import (
    CheckpointError, TrainingError, TrainingInterrupted, load_checkpoint, read_metrics, resume_config, save_checkpoint,
)
from capsnet.training.engine import setting_differences
from reference import recover_shifts
from toy_data import colour_squares

QUICK = dict(model="capsnet-tiny", limit_train=256, limit_test=100, batch_size=32, progress=False)


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """A suite started in the background (``pytest &``) inherits an ignored SIGINT, which the trainer leaves
    ignored, as it should; these tests press Ctrl-C, so they need it live."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def config(tmp_path, shared_data, name="run", **overrides) -> TrainConfig:
    values = {**QUICK, "data_dir": str(shared_data), "output_dir": str(tmp_path / name), **overrides}
    return TrainConfig(**values)


def strip_times(history):
    return [{k: v for k, v in m.items() if k not in ("epoch_seconds", "test_seconds", "train_images_per_second")} for m in history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{name} differs")


def test_capsnet_train_quick_run_reaches_stated_test_accuracy(tmp_path, shared_data, capsys):
    """`capsnet train --limit-train 3000`, 2 epochs of the tiny CapsNet: >= 85% on the first 1,000 test images."""
    run = tmp_path / "run"
    argv = ["train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-train", "3000",
            "--limit-test", "1000", "--batch-size", "64", "--epochs", "2", "--no-progress", "--output-dir", str(run)]
    assert main(argv) == 0
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["test_examples"] == 1000
    assert metrics[-1]["test_error"] <= 0.15, metrics
    assert all(m["epoch_seconds"] > 0 and m["test_seconds"] > 0 for m in metrics)
    assert {p.name for p in run.iterdir()} == {"config.json", "metrics.jsonl", "last.pt", "best.pt"}
    assert json.loads((run / "config.json").read_text())["model_kwargs"]["routing_iterations"] == 3
    out = capsys.readouterr().out
    assert "epoch 2/2: train loss" in out and f"done: test error {metrics[-1]['test_error']:.2%}" in out
    assert main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 2\n" in out and f"nothing to do: {run} has already trained 2 epochs" in out
    assert main(argv + ["--resume", "--epochs", "1"]) == 0
    assert "has already trained 2 epochs; raise --epochs" in capsys.readouterr().out


def test_resume_after_an_epoch_matches_an_uninterrupted_run(tmp_path, shared_data):
    straight = Trainer(config(tmp_path, shared_data, "straight", epochs=2))
    history = straight.fit()
    Trainer(config(tmp_path, shared_data, "split", epochs=1)).fit()
    resumed = Trainer(config(tmp_path, shared_data, "split", epochs=2, resume=True))
    resumed.fit()
    assert strip_times(read_metrics(tmp_path / "split")) == strip_times(history)
    assert_same_weights(resumed.model, straight.model)


def test_version_1_checkpoint_with_a_single_random_state_still_resumes_exactly(tmp_path, shared_data):
    cnn = dict(model="baseline-cnn-tiny", epochs=2)  # dropout: the random state matters
    straight = Trainer(config(tmp_path, shared_data, "straight", **cnn))
    straight.fit()
    Trainer(config(tmp_path, shared_data, "split", **{**cnn, "epochs": 1})).fit()
    last = tmp_path / "split" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["version"] == 2 and len(checkpoint["rng"]) == 1
    torch.save({**checkpoint, "version": 1, "rng": checkpoint["rng"][0]}, last)  # as capsnet wrote it before
    resumed = Trainer(config(tmp_path, shared_data, "split", **cnn, resume=True))
    resumed.fit()
    assert_same_weights(resumed.model, straight.model)


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path, shared_data, monkeypatch):
    straight = Trainer(config(tmp_path, shared_data, "straight", epochs=2))
    straight.fit()

    interrupted = Trainer(config(tmp_path, shared_data, "split", epochs=2))
    original_step, calls = interrupted._train_step, []

    def step_with_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 11:  # in the middle of the second epoch (8 batches per epoch), before the update
            os.kill(os.getpid(), signal.SIGINT)
        original_step(*args)

    monkeypatch.setattr(interrupted, "_train_step", step_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    saved = load_checkpoint(tmp_path / "split" / "last.pt")["progress"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 3, 11)

    resumed = Trainer(config(tmp_path, shared_data, "split", epochs=2, resume=True))
    resumed.fit()
    assert_same_weights(resumed.model, straight.model)
    assert strip_times(read_metrics(tmp_path / "split")) == strip_times(read_metrics(tmp_path / "straight"))


def test_save_every_saves_mid_epoch_so_a_run_killed_without_warning_resumes_exactly(tmp_path, shared_data, monkeypatch):
    """A SIGKILL or a power cut gives no chance to save: --save-every leaves a recent last.pt behind anyway."""
    straight = Trainer(config(tmp_path, shared_data, "straight", epochs=2))
    straight.fit()

    killed = Trainer(config(tmp_path, shared_data, "split", epochs=2, save_every=1e-9))  # due after every batch
    original_step, calls = killed._train_step, []

    def step_then_die(*args):
        calls.append(1)
        if len(calls) == 12:  # the 4th batch of the second epoch (8 batches per epoch): no save on the way out
            raise RuntimeError("killed")
        original_step(*args)

    monkeypatch.setattr(killed, "_train_step", step_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        killed.fit()
    saved = load_checkpoint(tmp_path / "split" / "last.pt")["progress"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 3, 11)

    resumed = Trainer(resume_config(tmp_path / "split"))
    assert resumed.config.save_every == 1e-9  # a setting of the run, read back
    resumed.fit()
    assert_same_weights(resumed.model, straight.model)
    assert strip_times(read_metrics(tmp_path / "split")) == strip_times(read_metrics(tmp_path / "straight"))


@pytest.mark.parametrize("minutes", [-1, float("nan")])
def test_save_every_must_be_positive(tmp_path, minutes):
    with pytest.raises(ValueError, match="--save-every must be a positive number of minutes"):
        TrainConfig(output_dir=str(tmp_path), save_every=minutes)
    assert TrainConfig(output_dir=str(tmp_path), save_every=0).save_every is None  # 0: off


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, epochs=2))
    trainer.fit()  # epochs 1 and 2 are fine
    before = (tmp_path / "run" / "last.pt").read_bytes()
    more = Trainer(config(tmp_path, shared_data, epochs=3, resume=True))
    poison_loss(more, monkeypatch)
    with pytest.raises(TrainingError, match=r"the loss became nan in epoch 3 .* last good checkpoint is .*last.pt"):
        more.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    poison_loss(trainer, monkeypatch)
    with pytest.raises(TrainingError, match="the loss became nan in epoch 1 .* no checkpoint was written yet"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def poison_loss(trainer, monkeypatch):
    loss = trainer.objective.loss
    original_terms = loss.terms
    monkeypatch.setattr(loss, "terms", lambda *a: original_terms(*a)._replace(total=original_terms(*a).total * float("nan")))


def test_learning_rate_follows_the_official_decay(tmp_path, shared_data):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1, lr_decay_steps=4))
    trainer.fit()  # 8 steps
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.96 ** (8 / 4))
    assert read_metrics(tmp_path / "run")[0]["lr"] == pytest.approx(1e-3 * 0.96**2)


def test_learning_rate_warms_up_linearly_then_decays(tmp_path, shared_data):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1, lr_warmup_steps=4, lr_decay_steps=4))
    used = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.fit()  # 8 steps
    expected = [1e-3 * 0.96 ** (k / 4) * min(1, (k + 1) / 4) for k in range(8)]
    assert used == pytest.approx(expected)
    assert used[0] == pytest.approx(0.25e-3) and used[3] == pytest.approx(1e-3 * 0.96 ** 0.75)


def test_training_batches_are_shifted_and_test_images_are_not(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1, limit_train=64))
    seen, seen_targets = [], []
    forward = trainer.model.forward

    def recording_forward(images, targets=None):
        seen.append(images.clone())
        seen_targets.append(targets)
        return forward(images, targets)

    monkeypatch.setattr(trainer.model, "forward", recording_forward)
    loss_terms, reconstruction_targets = trainer.objective.loss.terms, []

    def recording_terms(output, images, targets):
        reconstruction_targets.append(images.clone())
        return loss_terms(output, images, targets)

    monkeypatch.setattr(trainer.objective.loss, "terms", recording_terms)
    trainer.fit()
    train_batches, test_batch = seen[:2], seen[2]
    # Labels travel with their images: the first batch of epoch 1 in the trainer's own order.
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen_targets[0], trainer.train_labels[order[:32]])
    assert seen_targets[2] is None  # evaluation masks the longest capsule
    # Every training image is its MNIST digit moved by at most 2 px (paper, section 5), zero-filled.
    inputs = torch.cat(train_batches)
    shifts = recover_shifts(trainer.train_images[order].float(), (inputs * 255).round(), max_shift=2)
    assert max(max(abs(dx), abs(dy)) for dx, dy in shifts) == 2
    assert sum(shift != (0, 0) for shift in shifts) > 40  # 64 images, each unshifted with probability 1/25
    # The decoder learns to reconstruct the shifted image the network saw, not the original.
    assert all(torch.equal(target, batch) for target, batch in zip(reconstruction_targets, train_batches, strict=True))
    torch.testing.assert_close(test_batch, trainer.test_images.float() / 255, rtol=0, atol=0)


def test_the_papers_recipe_is_the_default_and_adam_is_its_optimizer(tmp_path, shared_data):
    defaults = TrainConfig(output_dir=str(tmp_path))
    recipe = (defaults.batch_size, defaults.lr, defaults.lr_decay, defaults.lr_decay_steps, defaults.max_shift,
              defaults.reconstruction_weight, defaults.model_setting("routing_iterations"),
              defaults.model_setting("reconstruction"), defaults.model)
    assert recipe == (128, 1e-3, 0.96, 2000, 2, 0.0005, 3, True, "capsnet-mnist")
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0)


def test_python_api_is_one_call(tmp_path, shared_data):
    history = capsnet.train(**QUICK, epochs=1, data_dir=str(shared_data), output_dir=str(tmp_path / "api"))
    assert [m["epoch"] for m in history] == [1]
    assert 0 <= history[0]["test_error"] <= 1
    with pytest.raises(TypeError, match="'epoch'"):  # misspelt: an error, not the default 10 epochs
        capsnet.train(**QUICK, epoch=1, data_dir=str(shared_data), output_dir=str(tmp_path / "typo"))


def test_load_model_gives_a_runs_trained_model_ready_to_evaluate(tmp_path, shared_data):
    history = capsnet.train(**QUICK, epochs=1, data_dir=str(shared_data), output_dir=str(tmp_path / "run"))
    (tmp_path / "run" / "last.pt").unlink()  # the folder must mean its best.pt
    rng_state = torch.get_rng_state()
    model = capsnet.load_model(tmp_path / "run")
    assert torch.equal(torch.get_rng_state(), rng_state)  # building the model drew no random numbers of the caller's
    assert isinstance(model, capsnet.CapsNet) and not model.training
    test = capsnet.data.MNIST(shared_data, train=False)
    report = capsnet.evaluate(model, test.images[:QUICK["limit_test"]], test.labels[:QUICK["limit_test"]])
    assert report["error"] == pytest.approx(history[0]["test_error"], abs=1e-12)
    assert {p.device.type for p in capsnet.load_model(tmp_path / "run", device="meta").parameters()} == {"meta"}
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["model_repr"] == repr(model)
    in_place = checkpoint["model_repr"].replace("ReLU()", "ReLU(inplace=True)")  # as saved by earlier code
    save_checkpoint(tmp_path / "inplace.pt", {**checkpoint, "model_repr": in_place})  # the same computation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capsnet.load_model(tmp_path / "run")  # built as saved: nothing to say
        capsnet.load_model(tmp_path / "inplace.pt")
    save_checkpoint(tmp_path / "other.pt", {**checkpoint, "model_repr": in_place.replace(
        "DynamicRouting(iterations=3", "DynamicRouting(iterations=1")})  # as if saved with routing=DynamicRouting(1)
    with pytest.warns(UserWarning, match=r"other.pt: the model 'capsnet-tiny' is built differently now than when it "
                                         r"was saved \(\(routing\): DynamicRouting\(iterations=3, detach_intermediate="
                                         r"True\) where it had \(routing\): DynamicRouting\(iterations=1, ") as caught:
        capsnet.load_model(tmp_path / "other.pt")
    assert [warning.filename for warning in caught] == [__file__]  # the caller's line
    save_checkpoint(tmp_path / "sigmoid.pt", {**checkpoint, "model_repr": in_place.replace("Sigmoid()", "Identity()")})
    with pytest.warns(UserWarning, match=r"\(\(5\): Sigmoid\(\) where it had \(5\): Identity\(\), as"):  # not a ReLU
        capsnet.load_model(tmp_path / "sigmoid.pt")
    save_checkpoint(tmp_path / "renamed.pt", {**checkpoint, "model_name": "capsnet-gone"})
    with pytest.raises(CheckpointError, match=r"holds the model 'capsnet-gone', which is not registered; this version "
                                              r"of capsnet does not define it \(was it written by another version\?\)"):
        capsnet.load_model(tmp_path / "renamed.pt")
    del checkpoint["model_module"]  # as saved before 2026-11-29
    save_checkpoint(tmp_path / "older.pt", {**checkpoint, "model_name": "capsnet-gone"})
    with pytest.raises(CheckpointError, match="holds the model 'capsnet-gone', which is not registered; import the "
                                              "module that registers it first"):
        capsnet.load_model(tmp_path / "older.pt")


def test_run_folder_guards(tmp_path, shared_data):
    with pytest.raises(TrainingError, match="nothing to resume"):
        Trainer(config(tmp_path, shared_data, epochs=1, resume=True))
    Trainer(config(tmp_path, shared_data, epochs=1)).fit()
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        Trainer(config(tmp_path, shared_data, epochs=1))


def test_ctrl_c_during_evaluation_keeps_the_finished_epoch(tmp_path, shared_data, monkeypatch):
    import capsnet.training.engine as engine

    original_counts = engine.class_tallies

    def evaluate_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original_counts(*args, **kwargs)

    saved_names = []
    monkeypatch.setattr(engine, "class_tallies", evaluate_with_ctrl_c)
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, checkpoint, original=engine.save_checkpoint: (
        saved_names.append(path.name), original(path, checkpoint)))
    with pytest.raises(TrainingInterrupted) as stop:
        Trainer(config(tmp_path, shared_data, epochs=2)).fit()
    assert stop.value.signum == signal.SIGINT
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 0, 8)
    assert saved_names == ["best.pt", "last.pt"]  # the epoch's end saved it: the stop does not write it again
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_default_run_folder_is_new_for_every_run():
    first = TrainConfig()
    assert first.output_dir.startswith("runs/capsnet-mnist-mnist-")
    assert TrainConfig(model="capsnet-tiny", dataset="fashion-mnist").output_dir.startswith("runs/capsnet-tiny-fashion-mnist-")


def test_torn_metrics_line_does_not_block_resume(tmp_path, shared_data):
    Trainer(config(tmp_path, shared_data, epochs=1)).fit()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step"')  # killed mid-write
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1]  # what the results table and curves read
    resumed = Trainer(config(tmp_path, shared_data, epochs=2, resume=True))
    resumed.fit()
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1, 2]


def signal_during_step(trainer, monkeypatch, signum, step):
    """Make ``trainer`` receive ``signum`` at the start of its ``step``-th training step."""
    original_step, calls = trainer._train_step, []

    def step_with_signal(*args):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        original_step(*args)

    monkeypatch.setattr(trainer, "_train_step", step_with_signal)


def test_sigterm_saves_like_ctrl_c_and_the_handlers_are_restored(tmp_path, shared_data, monkeypatch):
    """Cluster schedulers and torchrun stop workers with SIGTERM: it must save a resumable checkpoint too."""
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    signal_during_step(trainer, monkeypatch, signal.SIGTERM, 3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.signum == signal.SIGTERM and stop.value.checkpoint == tmp_path / "run" / "last.pt"
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (saved["epoch"], saved["batch"]) == (0, 3)
    assert signal.getsignal(signal.SIGTERM) is before


def test_capsnet_train_stopped_by_sigterm_exits_143_and_says_how_to_continue(tmp_path, shared_data, monkeypatch,
                                                                             capsys):
    """128 + the signal's number, as a shell reports a process that the signal ended: schedulers read it."""
    original_init = Trainer.__init__

    def init_then_signal_at_step_2(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        signal_during_step(self, monkeypatch, signal.SIGTERM, 2)

    monkeypatch.setattr(cli.Trainer, "__init__", init_then_signal_at_step_2)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-train", "256",
              "--limit-test", "100", "--batch-size", "32", "--no-progress", "--output-dir", str(run)])
    assert exit_info.value.code == 143
    err = capsys.readouterr().err
    assert f"interrupted by SIGTERM: checkpoint saved to {run / 'last.pt'}; continue with --resume" in err


def test_canvas_centres_train_and_test_digits_and_the_affine_set_is_40px(tmp_path, shared_data):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1, limit_train=32, limit_test=50, canvas=40, max_shift=6,
                             extra_test="affnist-synthetic"))
    assert trainer.train_images.shape[1:] == trainer.test_images.shape[1:] == trainer.extra_test_images.shape[1:] == (1, 40, 40)
    assert torch.equal(trainer.test_images[:, :, 6:34, 6:34].long().sum(), trainer.test_images.long().sum())
    assert trainer.model.image_size == (40, 40)
    metrics = trainer.fit()[0]
    assert 0 <= metrics["affnist-synthetic_error"] <= 1


def test_the_affine_test_set_needs_the_40px_canvas(tmp_path):
    with pytest.raises(ValueError, match="--extra-test affnist-synthetic has 40x40 images: it needs --canvas 40"):
        TrainConfig(extra_test="affnist-synthetic", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="it needs --canvas 40"):  # before looking for any data
        load_test_set("mnist", str(tmp_path), extra_test="affnist-synthetic")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_hangup_saves_like_ctrl_c(tmp_path, shared_data, monkeypatch):
    """A terminal that closes (a dropped ssh connection) sends SIGHUP: the run saves instead of dying."""
    def before(signum, frame):  # not the default (which would end pytest) nor ignored (as under nohup)
        raise AssertionError("the trainer should have handled SIGHUP")

    previous = signal.signal(signal.SIGHUP, before)
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    signal_during_step(trainer, monkeypatch, signal.SIGHUP, 2)
    try:
        with pytest.raises(TrainingInterrupted) as stop:
            trainer.fit()
        assert stop.value.signum == signal.SIGHUP
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["batch"] == 2


def test_sigterm_is_handled_even_when_ctrl_c_is_ignored(tmp_path, shared_data, monkeypatch):
    """A job started with `&` from a script ignores SIGINT; a scheduler's SIGTERM must still save."""
    monkeypatch.setattr(signal, "getsignal", lambda signum, original=signal.getsignal: (
        signal.SIG_IGN if signum == signal.SIGINT else original(signum)))
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    signal_during_step(trainer, monkeypatch, signal.SIGTERM, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["batch"] == 2


def test_time_limit_stops_at_an_epoch_end_and_resume_continues(tmp_path, shared_data):
    first = Trainer(config(tmp_path, shared_data, epochs=3, time_limit=1e-9)).fit()
    assert [m["epoch"] for m in first] == [1]  # the limit had passed when the first epoch ended
    rest = Trainer(config(tmp_path, shared_data, epochs=3, resume=True)).fit()
    assert [m["epoch"] for m in rest] == [2, 3]


def test_capsnet_train_says_how_to_continue_a_run_stopped_by_the_time_limit(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-train", "64", "--limit-test", "50",
            "--batch-size", "32", "--epochs", "3", "--time-limit", "1e-9", "--no-progress", "--output-dir", str(run)]
    assert main(argv) == 0
    assert f"stopped by --time-limit after epoch 1 of 3; continue with --resume --output-dir {run}" in capsys.readouterr().out
    assert main(["train", "--resume", "--output-dir", str(run)]) == 0  # as it says: the run's settings are read back
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]  # and the time limit, one invocation's, is not
    # the affine test sets need a model trained on the 40x40 canvas
    assert main(["evaluate", str(run / "last.pt"), "--limit-test", "20", "--extra-test", "affnist-synthetic"]) == 2
    assert "--extra-test affnist-synthetic has 40x40 images: it needs --canvas 40" in capsys.readouterr().err


def test_stop_at_error_ends_the_run_at_the_first_epoch_that_reaches_it(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-train", "64", "--limit-test",
            "100", "--batch-size", "32", "--epochs", "3", "--no-progress", "--output-dir", str(run)]
    assert main(argv + ["--stop-at-error", "99.5"]) == 0  # reached by anything but a 100% error
    assert [m["epoch"] for m in read_metrics(run)] == [1]
    assert "stopped early: test error at or below --stop-at-error 99.5%" in capsys.readouterr().out
    assert main(argv + ["--stop-at-error", "99.5", "--resume"]) == 0
    assert f"nothing to do: {run} reached --stop-at-error 99.5%" in capsys.readouterr().out
    assert main(argv + ["--stop-at-error", "0.01", "--resume"]) == 0  # a lower target trains on
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]
    trainer = Trainer(capsnet.training.resume_config(run, progress=False))
    assert trainer.progress.last_error == read_metrics(run)[-1]["test_error"]
    trainer.progress.best_error, trainer.progress.last_error = 0.2, 0.3  # an earlier epoch met 25%, the last did not
    for target, reached in ((25, False), (30, True), (35, True)):
        trainer.config.stop_at_error = target
        assert trainer.reached_target is reached


@pytest.mark.parametrize("percent", [-1, 100, float("nan")])
def test_stop_at_error_must_be_a_percentage(tmp_path, percent):
    with pytest.raises(ValueError, match=r"--stop-at-error must be a test error in percent, from 0 \(off\) to below 100"):
        TrainConfig(output_dir=str(tmp_path), stop_at_error=percent)
    assert TrainConfig(output_dir=str(tmp_path), stop_at_error=0).stop_at_error is None


def test_checkpoint_of_an_unknown_version_is_refused_by_name(tmp_path):
    torch.save({"format": "capsnet-checkpoint", "version": 3}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="has checkpoint version 3, this capsnet reads 1 to 2"):
        load_checkpoint(tmp_path / "new.pt")


@pytest.mark.parametrize("minutes", [-1, float("nan")])
def test_time_limit_must_be_positive(tmp_path, minutes):
    with pytest.raises(ValueError, match="--time-limit must be a positive number of minutes"):
        TrainConfig(output_dir=str(tmp_path), time_limit=minutes)
    assert TrainConfig(output_dir=str(tmp_path), time_limit=0).time_limit is None  # 0: off


@pytest.mark.parametrize("model", ["capsnet-tiny", "baseline-cnn-tiny"])
def test_channels_last_applies_to_the_convolutions_only_and_trains(tmp_path, shared_data, model):
    trainer = Trainer(config(tmp_path, shared_data, model=model, channels_last=True, limit_train=64))
    trainer.fit()
    convolutions = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    if model == "capsnet-tiny":  # W[i, j] is 4-D too, but no image: it stays as it was
        assert trainer.model.digits.weight.is_contiguous()


def test_the_affine_test_sets_need_mnist(tmp_path):
    with pytest.raises(ValueError, match="--extra-test affnist holds MNIST digits: it needs --dataset mnist"):
        TrainConfig(output_dir=str(tmp_path), dataset="fashion-mnist", canvas=40, extra_test="affnist")


def test_weight_std_reaches_the_digit_capsules_and_is_recorded_only_when_set(tmp_path):
    shape = {"num_classes": 10, "in_channels": 1, "image_size": (28, 28)}
    assert "weight_std" not in TrainConfig(output_dir=str(tmp_path)).model_kwargs(**shape)  # older runs still resume
    kwargs = TrainConfig(output_dir=str(tmp_path), weight_std=0.1).model_kwargs(**shape)
    torch.manual_seed(0)
    assert create_model("capsnet-tiny", **kwargs).digits.weight.std().item() == pytest.approx(0.1, rel=0.02)
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="--weight-std must be a positive number"):
            TrainConfig(output_dir=str(tmp_path), weight_std=bad)


def poison_weights_at_step(trainer, monkeypatch, step):
    """Make the optimizer write NaN into the weights at its ``step``-th step (that step's loss is still finite)."""
    original_step, calls = trainer.optimizer.step, []

    def step_then_poison(*args, **kwargs):
        original_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(trainer.optimizer, "step", step_then_poison)


@pytest.mark.parametrize("stop", ["epoch end", "signal"])
def test_non_finite_weights_are_never_saved(tmp_path, shared_data, monkeypatch, stop):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    trainer.fit()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    more = Trainer(config(tmp_path, shared_data, epochs=2, resume=True))
    last_step = 256 // 32  # of epoch 2
    poison_weights_at_step(more, monkeypatch, last_step if stop == "epoch end" else 3)
    if stop == "signal":
        signal_during_step(more, monkeypatch, signal.SIGINT, 3)
    with pytest.raises(TrainingError, match=r"the weights became non-finite in epoch 2 .* last good checkpoint is"):
        more.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_compile_that_fell_back_is_recorded_as_off(tmp_path, shared_data, monkeypatch):
    def refuse(function, **options):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(UserWarning, match="no compiler here"):
        trainer = Trainer(config(tmp_path, shared_data, epochs=1, compile=True))
    assert trainer.settings()["compile"] == "off"


def test_a_compile_that_fails_at_its_first_step_is_recorded_as_off_after_the_epoch(tmp_path, shared_data, monkeypatch):
    def fails_when_called(*args):
        raise RuntimeError("the C++ compiler failed")

    monkeypatch.setattr(torch, "compile", lambda function, **options: fails_when_called)
    trainer = Trainer(config(tmp_path, shared_data, epochs=1, compile=True))
    assert trainer.settings()["compile"] == "default"  # what CPU compiles with, until the first step
    with pytest.warns(UserWarning, match="the C\\+\\+ compiler failed"):
        trainer.fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["compile"] == "off"


def test_resuming_with_another_model_setting_names_it(tmp_path, shared_data):
    Trainer(config(tmp_path, shared_data, epochs=1, weight_std=0.05)).fit()
    with pytest.raises(capsnet.training.CheckpointError, match=r"--weight-std is 0\.01 but the checkpoint has 0\.05"):
        Trainer(config(tmp_path, shared_data, epochs=2, resume=True, weight_std=0.01))
    with pytest.raises(capsnet.training.CheckpointError,
                       match=r"--weight-std is unset \(the model's default\) but the checkpoint has 0\.05"):
        Trainer(config(tmp_path, shared_data, epochs=2, resume=True))


@pytest.mark.parametrize("caller_made_the_group", [True, False])
def test_train_leaves_a_process_group_the_caller_made(monkeypatch, caller_made_the_group):
    from capsnet.training import engine

    ended = []
    monkeypatch.setattr(engine, "in_process_group", lambda: caller_made_the_group)
    monkeypatch.setattr(engine, "shutdown_distributed", lambda: ended.append(True))
    monkeypatch.setattr(engine, "Trainer", lambda config: type("Done", (), {"fit": lambda self: []})())
    assert capsnet.train(epochs=1, output_dir="unused") == []
    assert ended == ([] if caller_made_the_group else [True])


def test_resume_config_reads_the_runs_settings_back_but_not_those_of_one_invocation(tmp_path):
    started = TrainConfig(model="capsnet-tiny", lr=0.01, limit_train=64, time_limit=5, progress=False,
                          output_dir="elsewhere")
    # a setting an older version saved and this one no longer has must not stop the run from resuming
    (tmp_path / "config.json").write_text(json.dumps({**started.to_dict(), "parameters": 1, "setting_since_removed": 1}))
    config = resume_config(tmp_path, epochs=7)
    assert (config.model, config.lr, config.limit_train, config.epochs) == ("capsnet-tiny", 0.01, 64, 7)
    assert (config.time_limit, config.progress, config.resume, config.output_dir) == (None, True, True, str(tmp_path))
    with pytest.raises(TrainingError, match="nothing to resume: .*config.json does not exist"):
        resume_config(tmp_path / "empty")


def test_config_file_starts_a_new_run_like_the_recorded_one_with_flags_on_top(tmp_path, monkeypatch):
    recorded = TrainConfig(model="capsnet-tiny", lr=0.01, seed=3, time_limit=5, output_dir=str(tmp_path / "old"))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({**recorded.to_dict(), "parameters": 1, "resolved": {}}))
    config = capsnet.training.config_from_file(tmp_path / "old", seed=4)  # the folder will do
    assert (config.model, config.lr, config.seed, config.time_limit, config.resume) == ("capsnet-tiny", 0.01, 4, None, False)
    assert config.output_dir != str(tmp_path / "old")  # a new run never writes into the recorded one
    started = []
    monkeypatch.setattr(cli, "_run_training", started.append)
    main(["train", "--config", str(tmp_path / "old" / "config.json"), "--epochs", "2", "--output-dir", str(tmp_path / "new")])
    assert (started[0].model, started[0].lr, started[0].epochs, started[0].output_dir) == (
        "capsnet-tiny", 0.01, 2, str(tmp_path / "new"))


@pytest.mark.parametrize(
    "content, message",
    [(None, "config file .*missing.json does not exist"), ("[1]", "must hold a JSON object of settings"),
     ("{", "is not valid JSON"), ('{"epoch": 5}', r"unknown settings \['epoch'\]; see capsnet train --help")],
)
def test_config_file_errors_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrainingError, match=message):
        capsnet.training.config_from_file(path)


@pytest.mark.parametrize(
    "settings, message",
    [({"reconstruction": "false"}, r"--reconstruction \(the setting 'reconstruction'\) must be true or false or null, "
                                   r"got 'false'"),
     ({"epochs": "2"}, "--epochs .* must be an integer, got '2'"), ({"epochs": 1.5}, "must be an integer, got 1.5"),
     ({"lr": True}, "--lr .* must be a number, got True"), ({"limit_train": 2.0}, "must be an integer or null, got 2.0"),
     ({"data_dir": 3}, r"--data-dir .* must be a path \(a string or pathlib.Path\) or null, got 3"),
     ({"model": 3}, "--model .* must be a string, got 3"),
     ({"epochs": True}, "--epochs .* must be an integer, got True")],
)
def test_settings_of_the_wrong_type_are_refused_not_misread(tmp_path, settings, message):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=message):  # "false" would be true: a decoder trained after all
        capsnet.training.config_from_file(path)
    import numpy as np

    config = TrainConfig(lr=np.float32(0.5), epochs=np.int64(3), limit_train=torch.tensor(7), output_dir=tmp_path,
                         data_dir=tmp_path / "data")
    assert (config.lr, config.epochs, config.limit_train, config.output_dir, config.data_dir) == (
        0.5, 3, 7, str(tmp_path), str(tmp_path / "data"))
    assert [type(value) for value in (config.lr, config.epochs, config.limit_train)] == [float, int, int]
    json.dumps(config.to_dict())  # what config.json will hold
    with pytest.raises(ValueError, match=r"--model .* must be a string, got PosixPath"):  # a path is not a name
        TrainConfig(model=tmp_path)
    with pytest.raises(ValueError, match=r"--data-dir .* must be a path .* got b'/data'"):  # config.json holds no bytes
        TrainConfig(data_dir=b"/data")


def test_zero_or_none_unsets_what_a_quick_runs_config_set(tmp_path):
    quick = TrainConfig(limit_train=256, limit_test=100, canvas=40, max_shift=6, extra_test="affnist-synthetic",
                        save_every=5, time_limit=30, stop_at_error=1.0, output_dir=str(tmp_path / "quick"))
    (tmp_path / "quick.json").write_text(json.dumps({**quick.to_dict(), "output_dir": None}))
    unset = dict(limit_train=0, limit_test=0, canvas=0, save_every=0, time_limit=0, stop_at_error=0, extra_test="none")
    full = capsnet.training.config_from_file(tmp_path / "quick.json", max_shift=2, **unset)
    assert all(getattr(full, name) is None for name in unset)  # and config.json will say so
    assert full.to_dict() == TrainConfig(output_dir=full.output_dir).to_dict()


def test_config_file_and_resume_do_not_mix(tmp_path, capsys):
    for output_dir in (["--output-dir", str(tmp_path)], []):
        assert main(["train", "--config", "x.json", "--resume", *output_dir]) == 2
        assert "--config starts a new run; --resume reads the settings of the run in" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config_from_file starts a new run; resume_config continues one"):
        capsnet.training.config_from_file(tmp_path, resume=True)


def test_evaluate_counts_errors_of_a_known_model_and_refuses_what_it_would_miscount():
    always_three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    with torch.no_grad():
        always_three[1].weight.zero_()
        always_three[1].bias.copy_(torch.arange(10.0) == 3)
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([3, 3, 1, 3, 0])
    with pytest.raises(ValueError, match="Sequential has no num_classes attribute: pass num_classes="):
        capsnet.evaluate(always_three, images, labels)
    assert len(capsnet.evaluate(always_three, images, labels, num_classes=12)["per_class_accuracy"]) == 12
    always_three.num_classes = 10  # as a CapsNet and a BaselineCNN have it
    result = capsnet.evaluate(always_three, images, labels, batch_size=2)
    assert result["error"] == pytest.approx(2 / 5) and result["examples"] == 5
    assert result["per_class_accuracy"][:4] == [0.0, 0.0, pytest.approx(math.nan, nan_ok=True), 1.0]
    assert capsnet.evaluate(always_three.double(), images, labels.to(torch.uint8))["error"] == pytest.approx(2 / 5)
    assert capsnet.evaluate(always_three, images, labels, precision="auto")["error"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        capsnet.evaluate(always_three, images, labels, batch_size=0)
    with pytest.raises(TypeError, match="evaluate takes uint8 images"):
        capsnet.evaluate(always_three, images.float() / 255, labels)
    with pytest.raises(TypeError, match="labels must be integer class indices, got torch.float32"):
        capsnet.evaluate(always_three, images, labels.float())
    with pytest.raises(ValueError, match=r"expected labels \(n,\) or \(n, objects\) for n = 5 images, n > 0; got .* \(4,\)"):
        capsnet.evaluate(always_three, images, labels[:4])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\), got values from 0 to 10"):
        capsnet.evaluate(always_three, images, torch.tensor([3, 3, 1, 10, 0]))
    as_a_pair = torch.nn.Sequential(always_three, Pair())
    as_a_pair.num_classes = 10
    with pytest.raises(TypeError, match="the model returned a tuple; predictions are read from a .* or from an "
                                        "output's lengths attribute"):
        capsnet.evaluate(as_a_pair, images, labels)


class SignOfMean(torch.nn.Module):
    """Class 1 when the mean input is positive, else class 0: tells normalized inputs from intensities."""

    num_classes = 2

    def forward(self, images):
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([-mean, mean], dim=1)


def test_evaluate_gives_the_model_intensities_or_what_transform_makes_of_them():
    images, labels = torch.full((4, 1, 3, 3), 40, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    assert capsnet.evaluate(SignOfMean(), images, labels)["error"] == 1.0  # 40 / 255 > 0: class 1
    seen = []

    def centre(batch):  # a model trained on inputs normalized by mean 0.5
        seen.append(batch.clone())
        return batch - 0.5

    assert capsnet.evaluate(SignOfMean(), images, labels, transform=centre, batch_size=3)["error"] == 0.0
    assert [len(batch) for batch in seen] == [3, 1]
    torch.testing.assert_close(torch.cat(seen), images.float() / 255)  # the transform gets [0, 1] intensities


class Pair(torch.nn.Module):
    """Returns ``(scores, scores)``: a model whose scores are not where evaluate looks for them."""

    def forward(self, scores):
        return scores, scores


def test_weights_that_no_longer_fit_their_model_name_are_refused_with_the_layers_that_differ(tmp_path):
    from capsnet import BaselineCNN, create_model
    from capsnet.training import load_model_weights, save_checkpoint

    wider = BaselineCNN(channels=(16, 16, 8), hidden=(40, 32))  # baseline-cnn-tiny has hidden (32, 32)
    save_checkpoint(tmp_path / "old.pt", {"model_name": "baseline-cnn-tiny", "model": wider.state_dict()})
    checkpoint = load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt: its weights do not fit the model 'baseline-cnn-tiny' as this "
                       r"version of capsnet builds it \(was it written by another version\?\): size mismatch for "
                       r"classifier.1.weight: copying a param with shape torch.Size\(\[40, 6272\]\)"):
        load_model_weights(create_model("baseline-cnn-tiny"), checkpoint, tmp_path / "old.pt")
    load_model_weights(tiny := create_model("baseline-cnn-tiny", hidden=(40, 32)), checkpoint, tmp_path / "old.pt")
    torch.testing.assert_close(tiny.classifier[1].weight, wider.classifier[1].weight)


def test_init_from_starts_a_new_run_from_the_weights_of_another(tmp_path, shared_data):
    pretrained = Trainer(config(tmp_path, shared_data, "pretrained", epochs=1))
    pretrained.fit()
    start = tmp_path / "pretrained" / "last.pt"
    tuned = Trainer(config(tmp_path, shared_data, "tuned", epochs=1, lr=1e-4, init_from=str(start)))
    assert_same_weights(tuned.model, pretrained.model)
    assert (tuned.progress.epoch, tuned.progress.step, tuned.scheduler.last_epoch) == (0, 0, 0)
    assert tuned.optimizer.state_dict()["state"] == {}  # Adam's moments start afresh
    assert tuned.optimizer.param_groups[0]["lr"] == 1e-4
    recorded = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert recorded["init_from"] == str(start)
    assert recorded["initial_weights"] == {"model": "capsnet-tiny", "epoch": 1, "batch": 0, "step": 8}  # 256 / 32
    tuned.fit()
    with pytest.raises(CheckpointError, match=r"--init-from is '.*other\.pt' but the checkpoint has '.*last\.pt'"):
        Trainer(resume_config(tmp_path / "tuned", epochs=2, init_from=str(tmp_path / "other.pt")))
    # A resumed run continues from its own last.pt, so the weights it started from may have moved since.
    start.rename(tmp_path / "moved.pt")
    resumed = Trainer(resume_config(tmp_path / "tuned", epochs=2))
    assert resumed.progress.epoch == 1
    assert_same_weights(resumed.model, tuned.model)
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["initial_weights"] == recorded["initial_weights"]


def test_init_from_and_data_dir_are_recorded_absolute_and_config_carries_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data_dir="../data").data_dir == str(tmp_path.parent / "data")
    assert TrainConfig(init_from="runs/x/best.pt").init_from == str(tmp_path / "runs" / "x" / "best.pt")
    assert TrainConfig(init_from="").init_from is None
    (tmp_path / "old").mkdir()  # as an older capsnet wrote it, with the paths as typed
    (tmp_path / "old" / "config.json").write_text(json.dumps({"data_dir": "data", "init_from": "w.pt"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = capsnet.training.config_from_file(tmp_path / "old")
    assert (config.data_dir, config.init_from) == (str(tmp_path / "elsewhere" / "data"), str(tmp_path / "elsewhere" / "w.pt"))
    assert capsnet.training.config_from_file(tmp_path / "old", init_from="").init_from is None


def test_a_capsnet_registered_as_a_classifier_is_refused_before_the_run_folder_is_made(tmp_path, shared_data,
                                                                                      own_registry):
    def small(**kwargs):  # a function, not the class: the registry cannot tell that it returns capsules
        return capsnet.CapsNet(conv_channels=8, primary_types=2, **kwargs)

    capsnet.register_model("test-function-capsnet", small)
    with pytest.raises(TrainingError, match=r"model 'test-function-capsnet' builds a CapsNet but is registered as a "
                       r"classifier .*register_model\('test-function-capsnet', builder, capsule_model=True\)"):
        Trainer(config(tmp_path, shared_data, "new/run", model="test-function-capsnet", limit_train=32))
    assert not (tmp_path / "new").exists()


class OnePassCapsNet(capsnet.CapsNet):
    """A CapsNet whose own defaults are one routing iteration and no decoder."""

    def __init__(self, *, routing_iterations=1, reconstruction=False, **kwargs):
        super().__init__(routing_iterations=routing_iterations, reconstruction=reconstruction, conv_channels=8,
                         primary_types=2, **kwargs)


def test_a_registered_models_routing_iterations_and_decoder_are_kept_unless_given(tmp_path, own_registry):
    capsnet.register_model("test-one-pass", capsnet.CapsNet, conv_channels=8, primary_types=2, routing_iterations=1,
                           reconstruction=False)
    capsnet.register_model("test-one-pass-class", OnePassCapsNet)  # the same, as the builder's defaults

    def built(model, **settings):
        kwargs = TrainConfig(model=model, output_dir=str(tmp_path), **settings).model_kwargs(10, 1, (28, 28))
        built_model = create_model(model, **kwargs)
        return built_model.digits.routing.iterations, built_model.decoder is not None

    for model in ("test-one-pass", "test-one-pass-class"):
        assert built(model) == (1, False)  # before: the paper's 3 iterations and a decoder, whatever the model said
        assert built(model, routing_iterations=2, reconstruction=True) == (2, True)
    unset = TrainConfig(model="test-one-pass", output_dir=str(tmp_path))
    assert (unset.routing_iterations, unset.reconstruction) == (None, None)  # config.json: not given
    assert [unset.model_setting(name) for name in ("routing_iterations", "reconstruction", "lr")] == [1, False, 1e-3]


def test_runs_that_recorded_the_former_defaults_still_resume(tmp_path):
    asked = TrainConfig(model="capsnet-tiny", output_dir=str(tmp_path))  # iterations and decoder: the model's
    saved = {**asked.to_dict(), "routing_iterations": 3, "reconstruction": True}  # as runs recorded them until now
    assert setting_differences(saved, asked, "the checkpoint") == []
    assert setting_differences({**saved, "routing_iterations": 1}, asked, "the checkpoint") == [
        "--routing-iterations is 3 but the checkpoint has 1"]
    # Left unset, as the model built them then: a model registered anew with other values does not resume the run.
    unset = {**asked.to_dict()}
    assert setting_differences(unset, asked, "the checkpoint", {"routing_iterations": 1, "reconstruction": True}) == [
        "--routing-iterations is 3 but the checkpoint has 1"]
    assert "--routing-iterations" not in capsnet.experiments._train_command({**saved, "model_kwargs": {}})


def test_init_from_weights_that_do_not_fit_names_the_settings_that_differ(tmp_path, shared_data):
    Trainer(config(tmp_path, shared_data, "cnn", model="baseline-cnn-tiny", epochs=1, limit_train=32)).fit()
    with pytest.raises(CheckpointError, match=r"cnn.last\.pt: its weights do not fit the model 'capsnet-tiny' of this "
                       r"run \(they are from 'baseline-cnn-tiny'\): Missing key.*; Unexpected key\(s\) in state_dict: "
                       r"\"features.0.weight\".* \(to start from them: --model baseline-cnn-tiny\)$"):
        Trainer(config(tmp_path, shared_data, "new/tuned", init_from=str(tmp_path / "cnn" / "last.pt")))
    assert not (tmp_path / "new").exists()  # a run that cannot start leaves no empty folders behind
    Trainer(config(tmp_path, shared_data, "plain", epochs=1, limit_train=32, reconstruction=False)).fit()
    with pytest.raises(CheckpointError, match=r"they are from 'capsnet-tiny'\): Missing key\(s\) in state_dict: "
                       r"\"decoder.*; model settings that differ \(not all change the layers\): --reconstruction is "
                       r"True but the checkpoint has False$"):
        Trainer(config(tmp_path, shared_data, "tuned", init_from=str(tmp_path / "plain" / "last.pt")))
    with pytest.raises(CheckpointError, match=r"--init-from: checkpoint .*nowhere\.pt does not exist \(--init-from "
                       r"\"\" starts from the seed instead\)"):
        Trainer(config(tmp_path, shared_data, "tuned3", init_from=str(tmp_path / "nowhere.pt")))
    assert not (tmp_path / "tuned3").exists()


def test_capsnet_train_init_from_and_resume_do_not_mix(tmp_path, capsys):
    assert main(["train", "--init-from", "a.pt", "--resume", "--output-dir", str(tmp_path)]) == 2
    assert "--init-from starts a new run from a checkpoint's weights; --resume continues" in capsys.readouterr().err


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(capsnet.config.time, "strftime", lambda fmt: "20261127-120000")
    base = tmp_path / "runs" / "capsnet-tiny-mnist-20261127-120000"
    first = Trainer(TrainConfig(**QUICK, data_dir=str(shared_data)))
    (base / "last.pt").write_bytes(b"")  # as when the first one has saved
    # The Python API too: replace() keeps the name a default, as the CLI's flags do.
    second = Trainer(TrainConfig(**QUICK, data_dir=str(shared_data)).replace(epochs=2))
    assert (first.run_dir.resolve(), second.run_dir.resolve()) == (base, base.with_name(base.name + "-2"))
    assert second.config.output_dir == str(second.run_dir)  # and so config.json and the checkpoints say
    assert json.loads((second.run_dir / "config.json").read_text())["output_dir"] == str(second.run_dir)
    with pytest.raises(capsnet.data.DataError):  # a run that cannot start makes no folder
        Trainer(TrainConfig(**QUICK, data_dir=str(tmp_path / "no-data")))
    assert sorted(p.name for p in base.parent.iterdir()) == [base.name, base.name + "-2"]


def test_best_pt_is_written_before_last_pt(tmp_path, shared_data, monkeypatch):
    written = []
    monkeypatch.setattr(capsnet.training.engine, "save_checkpoint", lambda path, payload: written.append(path.name))
    Trainer(config(tmp_path, shared_data, epochs=1, limit_train=32)).fit()
    assert written == ["best.pt", "last.pt"]  # killed in between, the run repeats the epoch and finds the same best


def test_a_run_folder_that_refuses_new_files_fails_before_training_and_leaves_no_folders(tmp_path, monkeypatch):
    def refuse(dest):  # as a read-only filesystem or an ACL refuses, which chmod cannot show as root
        raise OSError(errno.EROFS, "Read-only file system", str(dest))

    monkeypatch.setattr(capsnet._files, "open_temp_beside", refuse)
    with pytest.raises(TrainingError, match=r"cannot write to the output folder .*new/run: Read-only file system$"):
        capsnet.training.runs.make_run_dir(tmp_path / "new" / "run", named_by_time=False)
    assert list(tmp_path.iterdir()) == []


def test_dropping_metric_lines_rewrites_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    text = '{"epoch": 1, "test_error": 0.5}\n{"epoch": 2, "test_error": 0.4}\n'
    path.write_text(text)
    runs = capsnet.training.runs
    runs.truncate_metrics(path, 2)  # nothing to drop: not rewritten
    monkeypatch.setattr(capsnet._files.os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        runs.truncate_metrics(path, 1)
    assert path.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    monkeypatch.undo()
    runs.truncate_metrics(path, 1)
    assert path.read_text() == '{"epoch": 1, "test_error": 0.5}\n'


def test_a_settings_file_written_by_hand_may_set_the_run_folder_and_time_limit_but_not_resume(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"epochs": 50, "time_limit": 600, "progress": False, "output_dir": str(tmp_path / "e1")}))
    config = capsnet.training.config_from_file(path)
    assert (config.epochs, config.time_limit, config.progress, config.output_dir) == (50, 600, False, str(tmp_path / "e1"))
    path.write_text(json.dumps({"epochs": 50, "resume": True}))
    with pytest.raises(TrainingError, match="sets resume: a file of settings starts a new run; continue one with"):
        capsnet.training.config_from_file(path)


def test_a_run_folder_without_best_pt_points_at_its_last_pt(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")  # a run stopped in its first epoch
    with pytest.raises(CheckpointError, match=r"best\.pt does not exist: the run has not finished an epoch yet; its "
                                              r".*last\.pt holds where it stopped"):
        load_checkpoint(tmp_path)


def test_every_setting_is_classified_for_resume():
    """A new setting must be placed on purpose: one that defines the run belongs in RUN_DEFINING_SETTINGS."""
    engine = capsnet.training.engine
    may_change = {name for name in TrainConfig.setting_names()} - set(engine.RUN_DEFINING_SETTINGS) - set(
        capsnet.training.runs._INVOCATION_SETTINGS)
    # How and where it runs, how long, and the init that the checkpoint's weights replace; plugins: where the model's
    # code lives (a module may move), while the model's name and layers must still match.
    assert may_change == {
        "channels_last", "compile", "data_dir", "device", "epochs", "eval_batch_size", "plugins", "precision",
        "retain_memory", "save_every", "stop_at_error", "weight_std",
    }


def test_epoch_seeds_are_those_every_run_so_far_was_trained_with():
    epoch_seed = capsnet.training.engine._epoch_seed
    assert [epoch_seed(0, epoch, stream=0) for epoch in (0, 1, 32)] == [0, 1, 32]  # batch order
    assert [epoch_seed(3, 5, stream=stream) for stream in (0, 1)] == [3_000_014, 3_000_014 + 7919]  # augmentation


def test_interrupted_names_its_signal_and_its_checkpoint(tmp_path):
    assert str(TrainingInterrupted(tmp_path / "last.pt", signal.SIGTERM)) == (
        f"interrupted by SIGTERM: checkpoint saved to {tmp_path / 'last.pt'}")
    assert str(TrainingInterrupted(tmp_path / "last.pt", 200)).startswith("interrupted by signal 200: checkpoint")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_the_first_stop_signal_is_the_reason_the_run_gives(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, epochs=1))
    original_step, calls = trainer._train_step, []

    def step_with_two_signals(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)  # a scheduler's stop, then the terminal closing
        original_step(*args)

    monkeypatch.setattr(trainer, "_train_step", step_with_two_signals)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.signum == signal.SIGTERM


def test_a_registered_dataset_of_rgb_images_trains_to_an_accuracy_and_loads(tmp_path, own_datasets):
    capsnet.register_dataset("colour-squares", colour_squares)
    history = capsnet.train(dataset="colour-squares", model="capsnet-tiny", epochs=2, batch_size=16, progress=False,
                            output_dir=str(tmp_path / "run"))
    assert history[-1]["test_error"] <= 0.05  # chance: 0.67
    model = capsnet.load_model(tmp_path / "run" / "last.pt")
    assert (model.in_channels, model.image_size, model.num_classes) == (3, (24, 24), 3)
    images, labels, _ = colour_squares(None, train=False)
    assert capsnet.evaluate(model, images, labels)["error"] == pytest.approx(history[-1]["test_error"], abs=1e-12)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "colour-squares"


def test_a_registered_dataset_is_checked_and_named_in_errors(tmp_path, own_datasets):
    with pytest.raises(ValueError, match="'mnist' is one of capsnet's own datasets; register yours under another name"):
        capsnet.register_dataset("mnist", colour_squares)
    with pytest.raises(ValueError, match=r"unknown value 'colour-squares' for --dataset; valid values are .*'mnist'.* "
                                         r"\(a dataset of your own: capsnet.register_dataset in a module passed as "
                                         r"--plugins MODULE\)"):
        TrainConfig(dataset="colour-squares")
    as_floats = lambda root, train: (colour_squares(root, train)[0] / 255, *colour_squares(root, train)[1:])
    capsnet.register_dataset("floats", as_floats)
    with pytest.raises(ValueError, match=r"dataset 'floats' \(training split\): images must be a uint8 tensor "
                                         r"\(n, C, H, W\) of pixel values 0..255, got torch.float32 \(96, 3, 24, 24\)"):
        capsnet.train(dataset="floats", model="capsnet-tiny", epochs=1, output_dir=str(tmp_path / "floats"))
    two_classes = lambda root, train: (*colour_squares(root, train)[:2], ["red", "green"])
    capsnet.register_dataset("two-names", two_classes)
    with pytest.raises(ValueError, match=r"dataset 'two-names' \(training split\): labels must be indices into its 2 "
                                         r"classes, got values from 0 to 2"):
        capsnet.train(dataset="two-names", model="capsnet-tiny", epochs=1, output_dir=str(tmp_path / "two"))
    with pytest.warns(UserWarning, match="dataset 'floats' is registered twice"):
        capsnet.register_dataset("floats", colour_squares)
    for name in ("", "my/data"):  # a name goes into the run folder's name
        with pytest.raises(ValueError, match="a dataset name is letters, digits, '_', '.' and '-', got "):
            capsnet.register_dataset(name, colour_squares)
    with pytest.raises(TypeError, match="^a dataset name is a string, got int$"):
        capsnet.register_dataset(5, colour_squares)
    assert capsnet.list_datasets() == sorted(capsnet.list_datasets()) and "floats" in capsnet.list_datasets()
    capsnet.register_dataset("pair", lambda root, train: colour_squares(root, train)[:2])
    with pytest.raises(ValueError, match=r"dataset 'pair' \(training split\): load\(root, train\) must return "
                                         r"\(images, labels, classes\), got tuple of 2"):
        capsnet.data.load_split("pair", None, train=True)
    capsnet.register_dataset("one-name", lambda root, train: (*colour_squares(root, train)[:2], "rgb"))
    with pytest.raises(ValueError, match=r"classes must be a list of class names, got 'rgb'"):
        capsnet.data.load_split("one-name", None, train=False)


def test_a_registered_datasets_splits_must_agree_and_fit_the_canvas(tmp_path, own_datasets, monkeypatch):
    roots = []

    def smaller_test_images(root, train):
        roots.append(root)
        images, labels, classes = colour_squares(root, train)
        return (images if train else images[..., :20, :20]), labels, classes

    monkeypatch.setenv("CAPSNET_DATA", str(tmp_path / "data"))
    capsnet.register_dataset("uneven", smaller_test_images)
    with pytest.raises(TrainingError, match=r"dataset 'uneven': its training images are \(3, 24, 24\) \(C, H, W\), "
                                            r"its test images \(3, 20, 20\)"):
        Trainer(TrainConfig(dataset="uneven", model="capsnet-tiny", output_dir=str(tmp_path / "uneven")))
    assert roots == [tmp_path / "data"] * 2  # the data root, from $CAPSNET_DATA here, as for MNIST
    with pytest.raises(ValueError, match="--canvas 22 must hold the 24x24 images of uneven"):
        Trainer(TrainConfig(dataset="uneven", model="capsnet-tiny", canvas=22, output_dir=str(tmp_path / "c22")))
    trainer = Trainer(TrainConfig(dataset="uneven", model="capsnet-tiny", canvas=26, output_dir=str(tmp_path / "c26")))
    assert trainer.model_kwargs["image_size"] == [26, 26]  # both splits on the canvas: a canvas below 28 is fine
    other_names = lambda root, train: (*colour_squares(root, train)[:2], ["red", "green", "blue" if train else "cyan"])
    capsnet.register_dataset("renamed", other_names)
    with pytest.raises(TrainingError, match=r"its training and test splits name different classes \(\['red', 'green', "
                                            r"'blue'\] and \['red', 'green', 'cyan'\]\)"):
        Trainer(TrainConfig(dataset="renamed", model="capsnet-tiny", output_dir=str(tmp_path / "renamed")))


def test_class_names_of_a_registered_dataset_are_kept_as_text_in_its_checkpoints(tmp_path, own_datasets):
    import numpy as np

    numpy_names = lambda root, train: (*colour_squares(root, train)[:2], np.array(["red", "green", "blue"]))
    capsnet.register_dataset("numpy-names", numpy_names)
    capsnet.train(dataset="numpy-names", model="capsnet-tiny", epochs=1, batch_size=32, limit_train=32,
                  progress=False, output_dir=str(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["classes"] == ["red", "green", "blue"]  # weights_only reads it


def scripted_errors(monkeypatch, trainer, errors):
    """The test pass reports these errors, one per epoch (the choice of best.pt and early stopping read them)."""
    it = iter(errors)
    monkeypatch.setattr(trainer, "_evaluate_on", lambda images, labels, progress=False: {
        "error": next(it), "examples": len(labels), "per_class_accuracy": []})


def test_best_pt_holds_the_first_epoch_with_the_lowest_test_error(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, limit_train=64, limit_test=20, epochs=4))
    scripted_errors(monkeypatch, trainer, [0.3, 0.2, 0.5, 0.2])  # epoch 4 ties epoch 2: best.pt stays epoch 2
    trainer.fit()
    best = load_checkpoint(tmp_path / "run" / "best.pt")["progress"]
    assert (best["epoch"], best["best_error"]) == (2, 0.2)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["epoch"] == 4


def test_early_stopping_reads_the_last_epochs_error_not_the_best(tmp_path, shared_data, monkeypatch):
    trainer = Trainer(config(tmp_path, shared_data, limit_train=64, limit_test=20, epochs=2))
    scripted_errors(monkeypatch, trainer, [0.2, 0.5])
    trainer.fit()
    assert (trainer.progress.best_error, trainer.progress.last_error) == (0.2, 0.5)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["last_error"] == 0.5
    trainer.config.stop_at_error = 30  # met by epoch 1, not by the last: trains on
    assert not trainer.reached_target


@pytest.mark.parametrize("max_shift", [0, 4])
def test_max_shift_bounds_the_training_shifts(tmp_path, shared_data, monkeypatch, max_shift):
    from capsnet.training import engine

    pairs, shift = [], engine.random_shift  # (images, shifted) of each training batch
    monkeypatch.setattr(engine, "random_shift", lambda images, *args, **kwargs: pairs.append(
        (images, shift(images, *args, **kwargs))) or pairs[-1][1])
    Trainer(config(tmp_path, shared_data, limit_train=64, limit_test=20, epochs=1, max_shift=max_shift)).fit()
    images, shifted = (torch.cat(batches).float() for batches in zip(*pairs))
    shifts = recover_shifts(images, shifted, max_shift=max_shift)
    assert max(max(abs(dx), abs(dy)) for dx, dy in shifts) == max_shift


def test_a_target_error_met_exactly_counts_despite_floating_point():
    assert 35 / 10_000 * 100 > 0.35  # 0.35000000000000003
    assert reaches_error(35 / 10_000, 0.35) and reaches_error(0.0025, 0.25)
    assert not reaches_error(36 / 10_000, 0.35) and not reaches_error(0.0, None)


def test_evaluate_puts_the_model_back_in_the_mode_it_was_in():
    model = create_model("capsnet-tiny")
    images, labels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), torch.arange(4)
    model.train()
    capsnet.evaluate(model, images, labels)
    assert model.training
    model.eval()
    capsnet.evaluate(model, images, labels)
    assert not model.training


def test_resume_refuses_a_checkpoint_trained_on_another_kind_of_device(tmp_path, shared_data):
    Trainer(config(tmp_path, shared_data, limit_train=64, limit_test=20, epochs=1, device="cpu")).fit()
    last = tmp_path / "run" / "last.pt"
    torch.save({**torch.load(last, weights_only=True), "device_type": "cuda"}, last)
    with pytest.raises(CheckpointError, match="the run is on cpu but the checkpoint was trained on cuda"):
        Trainer(config(tmp_path, shared_data, limit_train=64, limit_test=20, epochs=2, device="cpu", resume=True))
