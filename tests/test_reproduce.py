"""`capsnet reproduce`: the paper's experiments as resumable sets of runs with a results table."""

import json
import sys

import pytest

from capsnet import DynamicRouting, SelfAttentionRouting, cli, create_model, load_model
from capsnet.cli import main
from capsnet.experiments import EXPERIMENTS, Experiment, _row_config, experiment_results


def reproduce(tmp_path, shared_data, *extra):
    argv = ["reproduce", "table1", "--tiny", "--data-dir", str(shared_data), "--runs-dir", str(tmp_path),
            "--limit-train", "64", "--limit-test", "100", "--batch-size", "32", "--no-progress", *extra]
    assert main(argv) == 0


def test_table1_has_the_papers_rows():
    rows = EXPERIMENTS["table1"].rows
    assert [(r.overrides.get("model"), r.overrides.get("routing_iterations", 3), r.overrides.get("reconstruction", True))
            for r in rows] == [("baseline-cnn", 3, True), (None, 1, False), (None, 1, True), (None, 3, False), (None, 3, True)]
    assert [r.paper for r in rows] == ["0.39%", "0.34% ± 0.03", "0.29% ± 0.011", "0.35% ± 0.036", "0.25% ± 0.005"]


def test_reproduce_table1_end_to_end_and_resumable(tmp_path, shared_data, capsys):
    reproduce(tmp_path, shared_data, "--epochs", "1")
    folder = tmp_path / "table1"
    results = json.loads((folder / "results.json").read_text())
    assert [r["epochs"] for r in results] == [1] * 5
    assert all(0 <= r["test_error"] <= 1 and r["test_examples"] == 100 for r in results)
    assert [r["model"] for r in results] == ["baseline-cnn-tiny"] + ["capsnet-tiny"] * 4
    configs = [json.loads((folder / row.name / "config.json").read_text()) for row in EXPERIMENTS["table1"].rows]
    counts = [sum(p.numel() for p in create_model(c["model"], **c["model_kwargs"]).parameters()) for c in configs]
    assert [r["parameters"] for r in results] == counts and counts[2] > counts[1]  # the decoder
    assert [c["model_kwargs"].get("routing_iterations") for c in configs] == [None, 1, 1, 3, 3]
    assert [c["model_kwargs"].get("reconstruction") for c in configs] == [None, False, True, False, True]
    cnn_metrics = json.loads((folder / "baseline-cnn" / "metrics.jsonl").read_text().splitlines()[0])
    assert "train_margin_loss" not in cnn_metrics and cnn_metrics["train_loss"] > 0
    table = (folder / "results.md").read_text()
    subset = "(† the first 64 training images and the first 100 test images)"  # --limit-train, --limit-test
    assert f"| Baseline CNN {subset} | 0.39% |" in table
    assert "Rows marked with a dagger (†) trained or tested on a part of the data only" in table
    assert f"| `baseline-cnn-tiny` ({counts[0]:,} parameters) | 0 |" in table
    assert "| epochs | time: training + testing |" in table and all(r["test_seconds"] >= 0 for r in results)
    assert "--model capsnet-tiny --epochs 1 --batch-size 32 --routing-iterations 1 --no-reconstruction" in table
    out = capsys.readouterr().out
    assert f"[table1] Baseline CNN: baseline-cnn-tiny ({counts[0]:,} parameters)" in out  # --no-progress
    assert "results.md" in out

    # Running it again with more epochs continues every row from its checkpoint.
    reproduce(tmp_path, shared_data, "--epochs", "2")
    results = json.loads((folder / "results.json").read_text())
    assert [r["epochs"] for r in results] == [2] * 5
    for row in EXPERIMENTS["table1"].rows:
        epochs = [json.loads(line)["epoch"] for line in (folder / row.name / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]


def test_reproduce_rejects_unknown_experiments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "table9"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'table9'" in capsys.readouterr().err


def test_reproduce_can_train_chosen_rows_in_a_chosen_order(tmp_path, shared_data, capsys):
    reproduce(tmp_path, shared_data, "--epochs", "1", "--rows", "routing3-reconstruction", "routing1-reconstruction")
    results = json.loads((tmp_path / "table1" / "results.json").read_text())
    assert [r.get("epochs") for r in results] == [None, None, 1, None, 1]
    assert "| Baseline CNN | 0.39% | not run yet |" in (tmp_path / "table1" / "results.md").read_text()
    assert main(["reproduce", "table1", "--rows", "routing9"]) == 2
    assert "unknown value 'routing9' for row" in capsys.readouterr().err


def test_reproduce_affnist_trains_on_a_40px_canvas_and_reports_the_affine_set(tmp_path, shared_data):
    argv = ["reproduce", "affnist", "--tiny", "--data-dir", str(shared_data), "--runs-dir", str(tmp_path),
            "--limit-train", "64", "--limit-test", "100", "--batch-size", "32", "--epochs", "3", "--no-progress",
            "--stop-at-error", "99.5"]  # any error of 100 images but 100% stops it: early stopping, as the paper
    assert main(argv) == 0
    results = json.loads((tmp_path / "affnist" / "results.json").read_text())
    assert [r["model"] for r in results] == ["capsnet-tiny", "baseline-cnn-tiny"]
    assert [r["epochs"] for r in results] == [1, 1]
    assert "| 1 (stopped at <= 99.5%) |" in (tmp_path / "affnist" / "results.md").read_text()
    assert all(0 <= r["extra_errors"]["affnist-synthetic"] <= 1 for r in results)
    config = json.loads((tmp_path / "affnist" / "capsnet" / "config.json").read_text())
    assert config["model_kwargs"]["image_size"] == [40, 40] and config["max_shift"] == 6
    assert "affnist-synthetic, last epoch" in (tmp_path / "affnist" / "results.md").read_text()


def test_reproduce_multimnist_trains_on_pairs_and_counts_both_digits(tmp_path, shared_data):
    argv = ["reproduce", "multimnist", "--tiny", "--data-dir", str(shared_data), "--runs-dir", str(tmp_path),
            "--limit-train", "64", "--limit-test", "100", "--batch-size", "32", "--epochs", "1", "--no-progress"]
    assert main(argv) == 0
    [result] = json.loads((tmp_path / "multimnist" / "results.json").read_text())
    assert (result["model"], result["epochs"], result["test_examples"]) == ("capsnet-tiny", 1, 100)
    assert result["test_error"] > 0.5  # 64 training pairs: both digits right is rare
    config = json.loads((tmp_path / "multimnist" / "capsnet" / "config.json").read_text())
    assert config["dataset"] == "multimnist" and config["model_kwargs"]["image_size"] == [36, 36]
    assert "| CapsNet, 3 routing iterations, reconstruction of each digit († the first 64 training images and the " \
        "first 100 test images) | 5.2% |" in (tmp_path / "multimnist" / "results.md").read_text()


def test_reproduce_routing_compares_routings_in_the_same_network(tmp_path, shared_data):
    argv = ["reproduce", "routing", "--tiny", "--data-dir", str(shared_data), "--runs-dir", str(tmp_path),
            "--limit-train", "64", "--limit-test", "100", "--batch-size", "32", "--epochs", "1", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "routing" / "results.json").read_text())
    assert [r["model"] for r in results] == ["capsnet-tiny", "capsnet-self-attention-tiny"]
    assert [r["epochs"] for r in results] == [1, 1]
    dynamic, attention = (load_model(tmp_path / "routing" / row.name / "last.pt") for row in EXPERIMENTS["routing"].rows)
    assert (type(dynamic.digits.routing), type(attention.digits.routing)) == (DynamicRouting, SelfAttentionRouting)
    # Only the routing differs: the same layers, plus the self-attention prior (1152 -> 128 primary capsules here).
    extra = {name: p.shape for name, p in attention.named_parameters()}.items() - \
        {name: p.shape for name, p in dynamic.named_parameters()}.items()
    assert extra == {("digits.routing.prior", (dynamic.digits.in_caps, 10))}
    table = (tmp_path / "routing" / "results.md").read_text()
    assert "| CapsNet, self-attention routing (Efficient-CapsNet's), reconstruction († the first 64 training images " \
        "and the first 100 test images) | not in the paper |" in table


def test_affnist_rows_stop_early_at_the_papers_accuracy_unless_told_otherwise(tmp_path):
    experiment = EXPERIMENTS["affnist"]
    for settings, expected in (({}, 0.78), ({"stop_at_error": None}, 0.78), ({"stop_at_error": 1.5}, 1.5),
                               ({"stop_at_error": 0}, None)):
        configs = [_row_config(experiment, row, tmp_path, settings, tiny=True) for row in experiment.rows]
        assert [c.stop_at_error for c in configs] == [expected, expected]
    assert _row_config(EXPERIMENTS["table1"], EXPERIMENTS["table1"].rows[0], tmp_path, {}, tiny=True).stop_at_error is None


def test_affnist_rows_test_on_the_synthetic_set_unless_given_the_real_one(tmp_path, capsys):
    experiment = EXPERIMENTS["affnist"]
    for settings, expected in (({}, "affnist-synthetic"), ({"extra_test": "affnist"}, "affnist")):
        configs = [_row_config(experiment, row, tmp_path, settings, tiny=True) for row in experiment.rows]
        assert [c.extra_test for c in configs] == [expected, expected]
    assert main(["reproduce", "table1", "--extra-test", "affnist", "--runs-dir", str(tmp_path)]) == 2
    assert "--extra-test applies to the 40x40 rows of an experiment that tests on an extra set (affnist), not to " \
        "table1" in capsys.readouterr().err


def test_experiment_defaults_give_way_only_to_the_flags_given(tmp_path, monkeypatch):
    given = {}
    monkeypatch.setattr(cli, "run_experiment", lambda name, runs_dir, rows, tiny, **settings: given.update(settings))
    assert main(["reproduce", "table1", "--epochs", "3", "--no-progress"]) == 0
    assert {key: value for key, value in given.items() if value is not None} == {"epochs": 3, "progress": False}
    experiment = Experiment("x", "x", EXPERIMENTS["table1"].rows, defaults={"batch_size": 64, "epochs": 9})
    config = _row_config(experiment, experiment.rows[-1], tmp_path, given, tiny=True)
    assert (config.batch_size, config.epochs, config.progress, config.seed) == (64, 3, False, 0)


def test_results_table_reads_run_folders_written_before_test_times_were_recorded(tmp_path):
    run = tmp_path / "multimnist" / "capsnet"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"model": "capsnet-mnist", "seed": 0, "dataset": "multimnist", "output_dir": str(run)}))
    epochs = [{"epoch": k, "test_error": error, "test_examples": 10_000, "epoch_seconds": 90.0}
              for k, error in ((1, 0.3), (2, 0.2))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in epochs))
    [result] = experiment_results("multimnist", tmp_path)
    assert (result["epochs"], result["best_test_error"], result["train_seconds"], result["test_seconds"]) == (2, 0.2, 180, None)
    table = (tmp_path / "multimnist" / "results.md").read_text()
    assert "| 2 | 3.0 min + not recorded | `capsnet-mnist` | 0 | unknown |" in table
    assert "| CapsNet, 3 routing iterations, reconstruction of each digit | 5.2% |" in table and "†" not in table


def test_results_table_shows_a_row_stopped_in_its_first_epoch_and_quotes_paths(tmp_path):
    started = tmp_path / "table1" / "baseline-cnn"
    started.mkdir(parents=True)
    (started / "config.json").write_text(json.dumps({"model": "baseline-cnn", "seed": 0, "dataset": "mnist"}))
    (started / "last.pt").write_bytes(b"")  # saved inside its first epoch (Ctrl-C, --save-every)
    spaced = tmp_path / "table1" / "routing1-no-reconstruction"
    spaced.mkdir()
    (spaced / "config.json").write_text(json.dumps({"model": "capsnet-mnist", "seed": 0, "dataset": "mnist",
                                                    "data_dir": "/my data", "output_dir": "/my runs/r1"}))
    (spaced / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_error": 0.01, "test_examples": 10_000,
                                                      "epoch_seconds": 60.0}) + "\n")
    results = experiment_results("table1", tmp_path)
    assert results[0]["started"] and "epochs" not in results[0]
    table = (tmp_path / "table1" / "results.md").read_text()
    assert "| Baseline CNN | 0.39% | no epoch finished yet |" in table
    assert "capsnet train --data-dir '/my data' --output-dir '/my runs/r1'" in table


def test_a_row_stopped_before_its_end_still_names_its_hardware(tmp_path, shared_data, monkeypatch):
    from capsnet import experiments
    from capsnet.runtime import describe_machine

    fit = experiments.Trainer.fit

    def stopped_after_an_epoch(self):
        fit(self)
        raise KeyboardInterrupt  # as SIGTERM or a kill would end the row, before its table is written

    monkeypatch.setattr(experiments.Trainer, "fit", stopped_after_an_epoch)
    with pytest.raises(KeyboardInterrupt):
        experiments.run_experiment("table1", tmp_path, rows=["routing1-reconstruction"], tiny=True, epochs=1,
                                   data_dir=str(shared_data), limit_train=64, limit_test=100, progress=False)
    row = experiment_results("table1", tmp_path)[2]
    assert row["machines"] == [describe_machine("cpu")]


def test_a_finished_row_is_left_alone_and_a_row_that_cannot_go_on_is_refused(tmp_path, shared_data, capsys):
    from capsnet.experiments import run_experiment
    from capsnet.training import TrainingError

    common = dict(rows=["routing1-reconstruction"], data_dir=str(shared_data), limit_train=64, limit_test=100,
                  batch_size=32, progress=False)
    run_experiment("table1", tmp_path, tiny=True, epochs=1, **common)
    run = tmp_path / "table1" / "routing1-reconstruction"
    recorded = {name: (run / name).read_bytes() for name in ("config.json", "machines.jsonl", "metrics.jsonl")}
    capsys.readouterr()
    run_experiment("table1", tmp_path, tiny=True, epochs=1, precision="bf16", **common)  # nothing left to train
    out = capsys.readouterr().out
    assert "capsnet-tiny (" not in out and "[table1] CapsNet, 1 routing iteration, reconstruction: finished" in out
    assert {name: (run / name).read_bytes() for name in recorded} == recorded  # its settings and hardware kept
    with open(run / "machines.jsonl", "a") as torn:
        torn.write('{"machine": "AMD EP')  # a crash while appending
    assert experiment_results("table1", tmp_path)[2]["machines"] == [json.loads(recorded["machines.jsonl"])["machine"]]
    assert "its invocations differed" not in (tmp_path / "table1" / "results.md").read_text()
    with open(run / "machines.jsonl", "a") as resumed:  # as after a resume in bf16
        resumed.write("\n" + json.dumps({**json.loads(recorded["machines.jsonl"]), "precision": "bf16"}) + "\n")
    assert experiment_results("table1", tmp_path)[2]["settings_changed"]
    assert ("(the settings of its last invocation; its invocations differed in device, precision, compile, "
            "channels-last or processes, as its machines.jsonl records)") in (tmp_path / "table1" / "results.md").read_text()
    (run / "machines.jsonl").write_bytes(recorded["machines.jsonl"])
    with pytest.raises(TrainingError, match=r"holds a --tiny run \(capsnet-tiny\): give --tiny, or choose another"):
        run_experiment("table1", tmp_path, tiny=False, epochs=1, **common)  # finished, but not what was asked
    with pytest.raises(TrainingError, match=r"was trained with other settings: --limit-train is 32 but its config\.json has 64;"):
        run_experiment("table1", tmp_path, tiny=True, epochs=1, **{**common, "limit_train": 32})
    settings = json.loads(recorded["config.json"])
    (run / "config.json").write_text(json.dumps({**settings, "max_shift": -1}))  # refused by this version
    with pytest.raises(TrainingError, match=r"config.json cannot be read as settings of this version \(--max-shift "
                                            r"must not be negative, got -1\); choose another --runs-dir"):
        run_experiment("table1", tmp_path, tiny=True, epochs=1, **common)
    (run / "config.json").unlink()
    with pytest.raises(TrainingError, match="holds checkpoints and metrics but no config.json to tell their settings"):
        run_experiment("table1", tmp_path, tiny=True, epochs=1, **common)
    (run / "config.json").write_bytes(recorded["config.json"])
    (run / "last.pt").unlink()  # e.g. to save disk space: the row is finished at 1 epoch, unfinished at 2
    run_experiment("table1", tmp_path, tiny=True, epochs=1, **common)
    with pytest.raises(TrainingError, match=r"holds 1 finished epoch \(metrics.jsonl\) but no last.pt to continue from"):
        run_experiment("table1", tmp_path, tiny=True, epochs=2, **common)
    assert (run / "metrics.jsonl").read_bytes() == recorded["metrics.jsonl"]  # not started afresh over its results


def test_a_row_that_fails_is_named_with_a_way_to_go_on(tmp_path, monkeypatch):
    from capsnet import experiments
    from capsnet.training import TrainingError

    class Failing:
        def __init__(self, config):
            self.distributed, self.progress, self.parameter_count = self, self, 1
            self.is_main, self.step = False, 0

        def fit(self):
            raise TrainingError("the loss became nan")


    monkeypatch.setattr(experiments, "Trainer", Failing)
    with pytest.raises(TrainingError, match=r"^row routing1-reconstruction of table1: the loss became nan \(to go on "
                                            r"with the rows after it: --rows routing3-reconstruction\)$"):
        experiments.run_experiment("table1", tmp_path, rows=["routing1-reconstruction", "routing3-reconstruction"],
                                   epochs=1)
    with pytest.raises(TrainingError, match=r"^row routing3-reconstruction of table1: the loss became nan$"):
        experiments.run_experiment("table1", tmp_path, rows=["routing3-reconstruction"], epochs=1)


def test_extra_test_none_is_no_extra_test_for_every_experiment(tmp_path, monkeypatch):
    from capsnet import experiments

    with pytest.raises(ValueError, match="--extra-test applies to the 40x40 rows"):
        experiments.run_experiment("table1", tmp_path, extra_test="affnist", epochs=1)

    def reached_training(config):
        raise LookupError(config.extra_test)

    monkeypatch.setattr(experiments, "Trainer", reached_training)
    with pytest.raises(LookupError, match="None"):  # past the checks, at the first row's training
        experiments.run_experiment("table1", tmp_path, extra_test="none", epochs=1)
    config = _row_config(EXPERIMENTS["affnist"], EXPERIMENTS["affnist"].rows[0], tmp_path, {"extra_test": "none"},
                         tiny=True)
    assert config.extra_test is None


def test_results_table_gives_the_last_epoch_and_the_lowest_with_its_epoch(tmp_path):
    run = tmp_path / "multimnist" / "capsnet"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"model": "capsnet-mnist", "seed": 0, "dataset": "multimnist", "output_dir": str(run)}))
    epochs = [{"epoch": k, "test_error": e, "test_examples": 10_000, "epoch_seconds": 60.0, "test_seconds": 1.0}
              for k, e in ((1, 0.3), (2, 0.2), (3, 0.25))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in epochs))
    [result] = experiment_results("multimnist", tmp_path)
    assert (result["test_error"], result["best_test_error"], result["best_epoch"]) == (0.25, 0.2, 2)
    assert "| **25.00%** | 20.00% (2) |" in (tmp_path / "multimnist" / "results.md").read_text()


def test_reproduce_progress_flags_win_over_terminal_detection(capsys, monkeypatch):
    given = {}
    monkeypatch.setattr(cli, "run_experiment", lambda name, runs_dir, rows, tiny, **settings: given.update(settings))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["reproduce", "table1", "--no-progress"]) == 0 and given["progress"] is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert main(["reproduce", "table1", "--progress"]) == 0 and given["progress"] is True
