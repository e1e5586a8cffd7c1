"""The command line: help text from the config, and one-line errors with exit status 2."""

import argparse
import fractions
import importlib
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

import capsnet
from capsnet import TrainConfig, cli, create_model
from capsnet.cli import main
import capsnet.models.registry
from capsnet.training import TrainingError, save_checkpoint


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--dataset", "--data-dir", "--epochs", "--batch-size", "--lr", "--lr-decay", "--routing-iterations",
                 "--no-reconstruction", "--reconstruction-weight", "--seed", "--device", "--output-dir",
                 "--limit-train", "--resume"):
        assert flag in out
    assert f"(default: {TrainConfig.batch_size})" in out and "(default: 0.0005)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["train", "--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
        (["train", "--data-dir", "/nonexistent/capsnet-data", "--output-dir", "{tmp}/run"], "/nonexistent/capsnet-data"),
        (["train", "--output-dir", "{tmp}/a-file/run"], "cannot write to the output folder"),
        (["evaluate", "{tmp}/a-file"], "is not a capsnet checkpoint"),
        (["evaluate", "{tmp}/missing.pt"], "does not exist"),
        (["train", "--resume", "--output-dir", "{tmp}/empty"], "nothing to resume"),
        (["train", "--max-shift", "-1"], "--max-shift must not be negative, got -1"),
        (["train", "--lr", "nan"], "must be finite numbers"),
        (["train", "--model", "resnet"], "unknown value 'resnet' for --model"),
        (["train", "--resume"], "--resume needs the --output-dir of the run to continue"),
        (["evaluate", "{tmp}/a-file", "--limit-test", "-2"], "--limit-test must be a positive integer (0: all), got -2"),
        (["evaluate", "{tmp}/a-file", "--batch-size", "-1"], "--batch-size must be a positive integer, got -1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    (tmp_path / "a-file").write_text("not a checkpoint")
    code, out, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert err.startswith("capsnet: error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_reproduce_help_names_the_rows_of_every_experiment_and_their_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "table1: baseline-cnn, routing1-no-reconstruction," in out and "affnist: capsnet, cnn" in out
    assert "affnist only: the 40x40 test set reported besides 40x40 MNIST: affnist-synthetic (the default;" in out
    assert "(default: 0.78 for affnist, as the paper's 99.22 percent accuracy; off for the others)" in out
    assert "--canvas" not in out  # the experiments set it


def test_unknown_dataset_is_a_usage_error(capsys):
    code, _, err = run(capsys, "train", "--dataset", "cifar10")
    assert code == 2 and err.startswith("capsnet: error: unknown value 'cifar10' for --dataset; valid values are "
                                        "'fashion-mnist', 'mnist', 'multimnist' (a dataset of your own: ")


def test_checkpoint_must_match_the_model_flags(capsys, tmp_path, shared_data):
    common = ["--data-dir", str(shared_data), "--model", "capsnet-tiny", "--limit-train", "64", "--limit-test", "50",
              "--batch-size", "32", "--no-progress", "--output-dir", str(tmp_path / "run")]
    code, out, _ = run(capsys, "train", "--epochs", "1", *common)
    tiny = sum(p.numel() for p in create_model("capsnet-tiny").parameters())
    assert code == 0 and out.startswith(f"training capsnet-tiny ({tiny:,} parameters) on mnist (64 images) on cpu")
    code, _, err = run(capsys, "train", "--epochs", "2", "--resume", "--routing-iterations", "1", *common)
    assert code == 2 and "--routing-iterations is 1 but the checkpoint has 3" in err and "routing_iterations" not in err
    code, out, _ = run(capsys, "train", "--epochs", "1", "--init-from", str(tmp_path / "run"),  # the folder: its best.pt
                       *common[:-1], str(tmp_path / "tuned"))
    assert code == 0 and f"\nstarting from the weights of {tmp_path / 'run'} (saved after epoch 1)\n" in out
    code, out, _ = run(capsys, "evaluate", str(tmp_path / "run" / "best.pt"), "--limit-test", "50")
    assert code == 0 and "test images (saved after epoch 1)\n" in out
    assert out.count("%") == 10 and out.count("no test images") == 1  # overall + 9 classes; no 8 in the first 50
    assert "accuracy per class (mnist test set):" in out
    code, out, _ = run(capsys, "evaluate", str(tmp_path / "run"), "--limit-test", "5")  # the folder: its best.pt
    assert code == 0 and out.startswith(f"{tmp_path / 'run' / 'best.pt'}: test error")
    assert out.count("no test images") == 5  # the first 5 test images are a 7, 2, 1, 0 and 4


def test_foreign_torch_file_is_rejected(capsys, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    code, _, err = run(capsys, "evaluate", str(tmp_path / "other.pt"))
    assert code == 2 and "is not a capsnet checkpoint" in err and "state dict" not in err
    torch.save(torch.nn.Linear(2, 3).state_dict(), tmp_path / "weights.pt")  # an own loop's torch.save
    code, _, err = run(capsys, "evaluate", str(tmp_path / "weights.pt"))
    assert code == 2 and err.endswith("(no 'capsnet-checkpoint' marker); it looks like a state dict saved with "
                                      "torch.save: build its model and call model.load_state_dict(torch.load(path))\n")
    torch.save({"ratio": fractions.Fraction(1, 3)}, tmp_path / "pickled.pt")  # loads only with weights_only=False
    code, _, err = run(capsys, "evaluate", str(tmp_path / "pickled.pt"))
    assert code == 2 and "holds Python objects that a capsnet checkpoint never has" in err
    assert "weights_only" not in err  # torch's advice to unpickle anything is not ours to pass on


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch, group_readable_umask):
    save_checkpoint(tmp_path / "c.pt", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o640  # as open() would make it, not mkstemp's 0600
    good = (tmp_path / "c.pt").read_bytes()

    def save_half_then_fail(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c.pt", {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"] and (tmp_path / "c.pt").read_bytes() == good


def test_python_dash_m_entry_point_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "-m", "capsnet", "train", "--epochs", "-1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "capsnet: error: --epochs must be a positive integer, got -1"


def test_traceback_flag_lets_the_error_through_for_a_bug_report(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        main(["train", "--resume", "--output-dir", str(tmp_path / "empty"), "--traceback"])


def test_version_names_capsnet_and_torch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"capsnet {capsnet.__version__} (torch {torch.__version__})\n"


PLUGIN = """
import capsnet
from capsnet.routing import Routing, RoutingOutput


class MeanRouting(Routing):
    \"\"\"Every lower capsule sends an equal share to every higher capsule: one iteration, as a routing of its own.\"\"\"

    def route(self, u_hat, bias):
        coupling = u_hat.new_full(u_hat.shape[:3], 1 / u_hat.shape[2])  # (b, i, j)
        return RoutingOutput(capsnet.squash(u_hat.mean(dim=1)), coupling)


capsnet.register_model("test-plugin-capsnet", capsnet.CapsNet, conv_channels=8, primary_types=2, routing=MeanRouting())
"""


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, own_registry):
    """A module my_capsules.py in the current folder, not yet imported, that registers a model with its own routing;
    the folder is off sys.path, as it is for the capsnet script."""
    (tmp_path / "my_capsules.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [path for path in sys.path if path not in ("", ".", os.getcwd())])

    def forget():  # as a new process would start: neither imported nor registered
        sys.modules.pop("my_capsules", None)
        sys.modules.pop("moved_capsules", None)
        capsnet.models.registry._MODELS.pop("test-plugin-capsnet", None)

    yield forget
    forget()


def test_plugins_let_the_cli_train_resume_evaluate_and_draw_a_model_registered_in_python(capsys, tmp_path, shared_data,
                                                                                         plugin_module, monkeypatch):
    common = ["--data-dir", str(shared_data), "--limit-train", "64", "--limit-test", "20", "--batch-size", "32",
              "--no-progress", "--output-dir", str(tmp_path / "run")]
    code, _, err = run(capsys, "train", "--model", "test-plugin-capsnet", "--epochs", "1", *common)
    assert code == 2 and "unknown value 'test-plugin-capsnet' for --model" in err
    code, out, _ = run(capsys, "train", "--plugins", "my_capsules", "--model", "test-plugin-capsnet", "--epochs", "1",
                       *common)
    assert code == 0 and out.startswith("training test-plugin-capsnet (") and "done: test error" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plugins"] == "my_capsules"
    plugin_module()
    code, out, _ = run(capsys, "train", "--resume", "--epochs", "2", "--output-dir", str(tmp_path / "run"))
    assert code == 0 and "resuming after epoch 1" in out and "after 2 epochs" in out  # config.json's plugins
    plugin_module()
    (tmp_path / "my_capsules.py").rename(tmp_path / "moved_capsules.py")  # a module may move between sessions
    code, out, _ = run(capsys, "train", "--resume", "--epochs", "3", "--plugins", "moved_capsules", "--output-dir",
                       str(tmp_path / "run"))
    assert code == 0 and "after 3 epochs" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plugins"] == "moved_capsules"
    plugin_module()
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run" / "last.pt"))
    assert code == 2 and err == (f"capsnet: error: {tmp_path / 'run' / 'last.pt'} holds the model "
                                 "'test-plugin-capsnet', which is not registered; its run imported --plugins "
                                 "moved_capsules: pass the same\n")
    with pytest.raises(capsnet.training.CheckpointError, match="'test-plugin-capsnet', which is not registered; "
                       "import moved_capsules, which its run imported, first"):
        capsnet.load_model(tmp_path / "run" / "last.pt")  # Python's way to the same checkpoint
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("moved_capsules")
    model = capsnet.load_model(tmp_path / "run" / "last.pt")
    assert [type(m).__module__ for m in model.modules() if type(m).__name__ == "MeanRouting"] == ["moved_capsules"]
    code, out, _ = run(capsys, "evaluate", str(tmp_path / "run" / "last.pt"), "--plugins", "moved_capsules",
                       "--limit-test", "20")
    assert code == 0 and "on 20 mnist test images" in out
    code, out, _ = run(capsys, "figures", str(tmp_path / "run" / "last.pt"), "--plugins", "moved_capsules",
                       "--limit-test", "20", "--examples", "1", "--out", str(tmp_path / "figures"))
    assert code == 0 and "fig3_reconstructions.png" in out


def test_a_checkpoint_names_the_module_that_registered_its_model_in_python(capsys, tmp_path, shared_data,
                                                                          plugin_module, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_capsules")  # registered by an import, not --plugins
    capsnet.train(model="test-plugin-capsnet", epochs=1, limit_train=32, limit_test=10, batch_size=32, progress=False,
                  data_dir=str(shared_data), output_dir=str(tmp_path / "run"))
    checkpoint = tmp_path / "run" / "last.pt"
    plugin_module()
    code, _, err = run(capsys, "evaluate", str(checkpoint))
    assert code == 2 and err.endswith("'test-plugin-capsnet', which is not registered; pass --plugins my_capsules, "
                                      "the module that registered it\n")
    with pytest.raises(capsnet.training.CheckpointError, match="not registered; import my_capsules, which registered "
                                                               "it, first$"):
        capsnet.load_model(checkpoint)
    saved = capsnet.training.load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "script.pt", {**saved, "model_module": "__main__"})  # registered by a script
    code, _, err = run(capsys, "evaluate", str(tmp_path / "script.pt"))
    assert code == 2 and err.endswith("not registered; it was registered by the script that trained it: register it "
                                      "the same way first, in a module passed as --plugins MODULE\n")
    assert capsnet.models.registry.registering_module("capsnet-mnist") == "capsnet.models"


DATASET_PLUGIN = """
import capsnet
from toy_data import colour_squares

capsnet.register_dataset("colour-squares", colour_squares)
"""


def test_plugins_let_the_cli_train_and_evaluate_on_a_dataset_registered_in_python(capsys, tmp_path, monkeypatch,
                                                                                  own_datasets):
    (tmp_path / "colour_data.py").write_text(DATASET_PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [path for path in sys.path if path not in ("", ".", os.getcwd())])
    monkeypatch.delitem(sys.modules, "colour_data", raising=False)
    code, _, err = run(capsys, "train", "--dataset", "colour-squares", "--model", "capsnet-tiny")
    assert code == 2 and "unknown value 'colour-squares' for --dataset" in err
    code, out, _ = run(capsys, "train", "--plugins", "colour_data", "--dataset", "colour-squares", "--model",
                       "capsnet-tiny", "--epochs", "1", "--batch-size", "16", "--no-progress", "--output-dir", "run")
    assert code == 0 and "on colour-squares (96 images)" in out and "done: test error" in out
    capsnet.data.registry._LOADERS.pop("colour-squares")  # as a new process would start: neither registered
    sys.modules.pop("colour_data")  # nor imported
    code, _, err = run(capsys, "evaluate", "run/last.pt")
    assert code == 2 and err == ("capsnet: error: this checkpoint was trained on the dataset 'colour-squares', which "
                                 "is not registered; its run imported --plugins colour_data: pass the same\n")
    code, out, _ = run(capsys, "evaluate", "run/last.pt", "--plugins", "colour_data")
    assert code == 0 and "on 96 colour-squares test images" in out and "green" in out
    capsnet.train(dataset="colour-squares", model="capsnet-tiny", epochs=1, batch_size=32, progress=False,
                  output_dir="python-run")  # registered by evaluate's import above, as by an import in a script
    capsnet.data.registry._LOADERS.pop("colour-squares")
    sys.modules.pop("colour_data")
    code, _, err = run(capsys, "evaluate", "python-run/last.pt")
    assert code == 2 and err.endswith("which is not registered; pass --plugins colour_data, the module that "
                                      "registered it\n")


def test_plugins_that_cannot_be_imported_are_named(capsys, plugin_module, tmp_path):
    code, _, err = run(capsys, "train", "--plugins", "my_capsules, no_such_plugin")
    assert code == 2 and err.startswith("capsnet: error: --plugins: no module named 'no_such_plugin' here (")
    (tmp_path / "needs_more.py").write_text("import no_such_dependency\n")
    code, _, err = run(capsys, "train", "--plugins", "needs_more")
    assert code == 2 and err == ("capsnet: error: --plugins: importing 'needs_more' failed: No module named "
                                 "'no_such_dependency'\n")
    (tmp_path / "has_a_bug.py").write_text("raise ValueError('bad shape')\n")
    code, _, err = run(capsys, "train", "--plugins", "has_a_bug")
    assert code == 2 and err == "capsnet: error: --plugins: importing 'has_a_bug' failed: ValueError: bad shape\n"
    code, _, err = run(capsys, "train", "--plugins", "my_capsules.py")
    assert code == 2 and err.endswith(": name the module (my_capsules), not its file\n")
    code, _, err = run(capsys, "train", "--model", "my-capsnet")
    assert code == 2 and err.endswith("(a model of your own: --plugins MODULE)\n")
    with pytest.raises(ValueError, match=r"--plugins .* must be a string or null, got \['my_capsules'\]"):
        TrainConfig(plugins=["my_capsules"])
    with pytest.raises(TypeError, match="plugins must be a string of comma-separated module names, got list"):
        capsnet.config.import_plugins(["my_capsules"])


def test_progress_bars_are_drawn_by_default_only_on_a_terminal(capsys, tmp_path, shared_data, monkeypatch):
    common = ["train", "--data-dir", str(shared_data), "--model", "capsnet-tiny", "--limit-train", "32",
              "--limit-test", "20", "--batch-size", "16", "--epochs", "1"]
    code, _, err = run(capsys, *common, "--output-dir", str(tmp_path / "log"))  # stderr captured: not a terminal
    assert code == 0 and "batch/s" not in err and not json.loads((tmp_path / "log" / "config.json").read_text())["progress"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, *common, "--output-dir", str(tmp_path / "terminal"))
    assert code == 0 and "batch/s" in err
    code, _, err = run(capsys, *common, "--progress", "--output-dir", str(tmp_path / "asked"))
    assert code == 0 and "batch/s" in err
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "log"), "--output-dir", str(tmp_path / "again"))
    assert code == 0 and "batch/s" in err  # a run's recorded progress is not read back: this terminal decides
    monkeypatch.undo()
    (tmp_path / "mine.json").write_text(json.dumps({"progress": True}))  # written by hand: the file decides
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "mine.json"), *common[1:],
                       "--output-dir", str(tmp_path / "file"))
    assert code == 0 and "batch/s" in err


def test_a_reader_that_goes_away_ends_the_command_quietly(capsys, monkeypatch):
    def write_to_a_closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")  # as print() does under `capsnet ... | head`

    parser = capsnet.cli.build_parser()
    monkeypatch.setattr(capsnet.cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(func=write_to_a_closed_pipe,
                                                                               traceback=False))
    assert run(capsys, "curves", ".") == (1, "", "capsnet: stopped: the program reading its output has closed it\n")
    with pytest.raises(BrokenPipeError):  # for a bug report
        parser.parse_args = lambda argv: argparse.Namespace(func=write_to_a_closed_pipe, traceback=True)
        main(["curves", "."])


def test_resume_says_where_in_the_epoch_it_goes_on():
    assert capsnet.cli._epochs_and_batches(2, 0) == "epoch 2"
    assert capsnet.cli._epochs_and_batches(0, 1) == "1 batch of epoch 1"
    assert capsnet.cli._epochs_and_batches(3, 23) == "23 batches of epoch 4"


def test_evaluate_names_what_an_extra_test_set_needs_of_the_checkpoint(capsys, tmp_path):
    checkpoint = {"config": {"dataset": "mnist", "canvas": None, "data_dir": str(tmp_path)}}
    with pytest.raises(ValueError, match=r"^--extra-test affnist-synthetic has 40x40 images: it needs --canvas 40 in "
                                         r"training; this checkpoint was trained with --dataset mnist and no --canvas$"):
        capsnet.cli._test_set(checkpoint, None, None, "affnist-synthetic")


def test_limit_test_zero_means_every_test_image_in_evaluate_and_figures_as_in_train():
    assert capsnet.cli._test_limit(0) is None and capsnet.cli._test_limit(None) is None
    assert capsnet.cli._test_limit(20) == 20


def test_evaluate_reads_the_test_set_from_data_dir_when_the_training_data_moved(tmp_path, shared_data, capsys):
    data = tmp_path / "data"
    data.symlink_to(shared_data, target_is_directory=True)
    run = tmp_path / "run"
    assert main(["train", "--model", "capsnet-tiny", "--data-dir", str(data), "--limit-train", "32", "--limit-test", "20",
                 "--batch-size", "16", "--epochs", "1", "--no-progress", "--output-dir", str(run)]) == 0
    data.unlink()  # trained on another machine
    capsys.readouterr()
    assert main(["evaluate", str(run), "--limit-test", "20"]) == 2
    assert "pass --data-dir" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--limit-test", "20", "--data-dir", str(shared_data)]) == 0
    assert "test error" in capsys.readouterr().out


def test_train_progress_flags_win_over_terminal_detection(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_training", seen.append)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["train", "--no-progress", "--output-dir", str(tmp_path / "a")]) == 0 and seen[-1].progress is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert main(["train", "--progress", "--output-dir", str(tmp_path / "b")]) == 0 and seen[-1].progress is True
