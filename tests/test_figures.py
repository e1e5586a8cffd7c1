"""Figures of what the capsules learned: contents as tensors, PNG files of the right size, the CLI."""

import json
import struct
import sys

import pytest
import torch

import capsnet.cli
from capsnet import create_model, figures
from capsnet.cli import main

pytest.importorskip("matplotlib")


def tiny_model(**overrides):
    torch.manual_seed(0)
    return create_model("capsnet-tiny", **overrides).eval()


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])  # width, height from the IHDR chunk


def test_perturbation_grid_varies_one_dimension_per_row_and_keeps_the_reconstruction_at_zero():
    model, image = tiny_model(), torch.rand(1, 28, 28)
    grid = figures.perturbation_grid(model, image)
    assert grid.shape == (16, 11, 1, 28, 28)
    torch.testing.assert_close(figures.PERTURBATIONS[[0, 5, 10]], torch.tensor([-0.25, 0.0, 0.25]))
    plain = model(image.unsqueeze(0)).reconstructions.view(1, 28, 28)
    for row in range(16):
        torch.testing.assert_close(grid[row, 5], plain)  # delta 0 is the plain reconstruction
    assert not torch.allclose(grid[0, 0], grid[0, 10])  # moving a dimension changes the picture


@pytest.mark.parametrize("capsule", [None, 3])
def test_perturbation_changes_only_one_dimension_of_the_chosen_capsule(capsule):
    model, image = tiny_model(), torch.rand(1, 28, 28)
    decoded = []
    model.decoder.register_forward_hook(lambda module, args, output: decoded.append(args[0].clone()))
    figures.perturbation_grid(model, image, capsule=capsule)
    poses = decoded[-1].view(16, 11, 10, 16)
    base = model(image.unsqueeze(0)).poses[0]
    winner = int(base.norm(dim=-1).argmax()) if capsule is None else capsule
    change = poses - base
    for d in range(16):
        torch.testing.assert_close(change[d, :, winner, d], figures.PERTURBATIONS)
        change[d, :, winner, d] = 0
    assert change.abs().max() == 0


def test_coupling_maps_add_up_to_the_primary_capsule_lengths():
    model, image = tiny_model(), torch.rand(1, 28, 28)
    maps = figures.coupling_maps(model, image)
    assert maps.shape == (10, 6, 6)
    features = torch.relu(model.conv1(image.unsqueeze(0)))
    lengths = model.primary(features)[0].norm(dim=-1).view(8, 6, 6).sum(0)  # 8 capsule types in the tiny model
    torch.testing.assert_close(maps.sum(0), lengths)


def test_pick_examples_finds_right_and_wrong_ones():
    model = tiny_model()
    images, labels = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    right, wrong = figures.pick_examples(model, images, labels, count=3, batch_size=7)
    predictions = model(images).lengths.argmax(-1)
    assert (predictions[right] == labels[right]).all() and (predictions[wrong] != labels[wrong]).all()
    assert len(wrong) == 3 and right.tolist() == (predictions == labels).nonzero().flatten()[:3].tolist()


def test_images_of_any_channels_are_drawn(tmp_path, monkeypatch):
    shown, original = [], figures._show
    monkeypatch.setattr(figures, "_show", lambda axis, picture, title="", **kw: shown.append(picture)
                        or original(axis, picture, title, **kw))
    for channels in (2, 4):  # RGB for 3, grey for 1, the mean of the channels in grey otherwise
        model, images = tiny_model(in_channels=channels), torch.rand(6, channels, 28, 28)
        figures.plot_reconstructions(model, images, torch.randint(0, 10, (6,)), tmp_path / "r.png", count=1)
        figures.plot_coupling(model, images[0], tmp_path / "c.png")
        assert shown[-1].shape == (channels, 28, 28) and png_size(tmp_path / "r.png")[1] in (290, 540)  # 1 or 2 groups


def test_figures_refuse_labels_the_model_has_no_capsule_for(tmp_path):
    model, images = tiny_model(num_classes=5), torch.rand(4, 1, 28, 28)
    labels = torch.tensor([7, 1, 2, 3])  # would count as wrong, then fail to find a name for class 7
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 5\), got values from 1 to 7$"):
        figures.pick_examples(model, images, labels, count=2)
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 5\)"):
        figures.plot_reconstructions(model, images, labels, tmp_path / "r.png")
    with pytest.raises(TypeError, match="labels must be integer class indices, got torch.float32"):
        figures.pick_examples(model, images, labels.float(), count=2)


def test_plots_write_pngs_of_the_expected_size(tmp_path):
    model, images, labels = tiny_model(), torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    passes = []  # of the whole model: each picture of one image needs one
    model.register_forward_hook(lambda *_: passes.append(1))
    assert png_size(figures.plot_perturbations(model, images[0], tmp_path / "p.png")) == (780, 1040)
    assert len(passes) == 1
    assert png_size(figures.plot_perturbations(model, images[0], tmp_path / "p3.png", capsule=3)) == (780, 1040)
    assert png_size(figures.plot_coupling(model, images[0], tmp_path / "c.png")) == (1430, 244)  # 3 title lines
    assert len(passes) == 3
    path = figures.plot_reconstructions(model, images, labels, tmp_path / "r.png", count=4)
    right, wrong = figures.pick_examples(model, images, labels, 4)
    groups = (len(right) > 0) + (len(wrong) > 0)  # two rows each: the right ones, then the wrong ones
    assert png_size(path) == (max(110 * max(len(right), len(wrong)), 400), 40 + 250 * groups)  # 400: the title


@pytest.mark.parametrize("classes", [3, 10])
def test_titles_fit_in_figures_of_few_classes_or_few_examples(tmp_path, monkeypatch, classes):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    drawn, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or save(figure, path))
    images = torch.rand(30, 1, 28, 28)
    pairs = torch.stack([torch.randperm(classes)[:2] for _ in range(30)])
    triples = torch.stack([torch.randperm(classes)[:3] for _ in range(30)])
    for model in (tiny_model(num_classes=classes), create_model("capsnet-self-attention-tiny", num_classes=classes)):
        figures.plot_coupling(model, images[0], tmp_path / "c.png")
        figures.plot_reconstructions(model, images, pairs[:, 0], tmp_path / "r.png", count=1)
        figures.plot_segmentation(model, images, pairs, tmp_path / "s.png", count=1)
        figures.plot_segmentation(model, images, triples, tmp_path / "s.png", count=1)  # the longest colour key
        figures.plot_perturbations(model, images[0], tmp_path / "p.png", capsule=1)  # its title's longest form
    colour = tiny_model(num_classes=classes, in_channels=3)
    figures.plot_segmentation(colour, torch.rand(30, 3, 28, 28), pairs, tmp_path / "s.png", count=1)  # a row each
    for figure in drawn:
        renderer = FigureCanvasAgg(figure).get_renderer()
        for text in figure.texts:  # the suptitle
            box = text.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= figure.bbox.width and box.y1 <= figure.bbox.height, text.get_text()
            below = [axis.title.get_window_extent(renderer).y1 for axis in figure.axes if axis.title.get_text()]
            assert box.y0 >= max(below) - 1, text.get_text()  # clear of the titles of the pictures under it


def test_plots_keep_the_callers_matplotlib_backend_figures_and_training_mode(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    model, images, labels = tiny_model().train(), torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's or a GUI's backend, say
    try:
        figures.plot_perturbations(model, images[0], tmp_path / "p.png")
        figures.plot_reconstructions(model, images, labels, tmp_path / "r.png", count=2)
        figures.plot_coupling(model, images[0], tmp_path / "c.png")
        with pytest.raises(FileNotFoundError):  # a save that fails leaves no figure behind either
            figures.plot_learning_curves({"a": [0.5]}, tmp_path / "missing" / "c.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    finally:
        matplotlib.use(before)
    assert model.training  # drawn in eval mode, handed back as it came
    no_decoder = tiny_model(reconstruction=False).train()
    with pytest.raises(ValueError, match="without the reconstruction decoder"):
        figures.plot_perturbations(no_decoder, images[0], tmp_path / "n.png")
    assert no_decoder.training  # also when drawing fails


def test_routing_picture_of_a_model_with_a_learned_prior_says_it_shows_the_softmax_without_it(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    titles, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw))
    image = torch.rand(1, 28, 28)
    figures.plot_coupling(create_model("capsnet-self-attention-tiny"), image, tmp_path / "attention.png")
    figures.plot_coupling(tiny_model(), image, tmp_path / "dynamic.png")
    assert "the softmax coupling c alone: the votes are weighted by c + the learned prior,\nwhich is below 0 for 0% " \
           "of them here" in titles[0] and "prior" not in titles[1]  # a prior starting at 0
    assert "(each sees a 17x17-pixel window of the input, 2 px from the next)" in titles[1]


def test_figures_of_a_capsnets_parts_name_what_they_need_of_another_model():
    other = create_model("baseline-cnn-tiny")  # a model of one's own, say
    for draw in (figures.coupling_maps, figures.perturbation_grid):
        with pytest.raises(TypeError, match="this figure needs a capsnet.CapsNet .*, got BaselineCNN"):
            draw(other, torch.rand(1, 28, 28))
    with pytest.raises(TypeError, match="this figure needs a capsnet.CapsNet"):
        figures.segmentation(other, torch.rand(2, 1, 28, 28))


def test_model_without_decoder_has_no_reconstructions_to_draw(tmp_path):
    with pytest.raises(ValueError, match="without the reconstruction decoder"):
        figures.perturbation_grid(tiny_model(reconstruction=False), torch.rand(1, 28, 28))


def test_fig4_shows_the_input_beside_the_perturbed_reconstructions(tmp_path, monkeypatch):
    model, image = tiny_model(), torch.rand(1, 28, 28)
    shown, original = [], figures._show
    monkeypatch.setattr(figures, "_show", lambda axis, picture, title="", **kw: shown.append((picture, title))
                        or original(axis, picture, title, **kw))
    figures.plot_perturbations(model, image, tmp_path / "p.png", capsule=2)
    grid = figures.perturbation_grid(model, image, capsule=2)
    assert len(shown) == 1 + 16 * 11 and shown[0][1] == "input" and torch.equal(shown[0][0], image)
    assert torch.equal(shown[1][0], grid[0, 0]) and shown[1][1] == "-0.25" and torch.equal(shown[-1][0], grid[-1, -1])


def test_perturbation_of_a_capsule_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="capsule must be a class index below 10, got 10"):
        figures.perturbation_grid(tiny_model(), torch.rand(1, 28, 28), capsule=10)
    with pytest.raises(ValueError, match="capsule must be an integer >= 0, got -1"):
        figures.perturbation_grid(tiny_model(), torch.rand(1, 28, 28), capsule=-1)


def test_capsnet_figures_command_writes_the_three_pictures(tmp_path, shared_data, capsys, monkeypatch):
    from matplotlib.axes import Axes

    marked, axvline = [], Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **kw: marked.append(x) or axvline(self, x, **kw))
    run = tmp_path / "run"
    assert main(["train", "--model", "capsnet-tiny", "--data-dir", str(shared_data), "--limit-train", "64",
                 "--limit-test", "50", "--batch-size", "32", "--epochs", "1", "--no-progress", "--output-dir", str(run)]) == 0
    assert main(["figures", str(run / "last.pt"), "--limit-test", "200", "--examples", "4"]) == 0
    names = sorted(p.name for p in (run / "figures").iterdir())
    assert names == ["fig3_reconstructions.png", "fig4_perturbations.png", "learning_curve.png", "routing_coupling.png"]
    assert marked == [1]  # the learning curve marks the epoch last.pt was saved after
    assert main(["figures", str(run / "last.pt"), "--index", "999", "--limit-test", "200"]) == 2
    assert "--index must be in [0, 200), got 999" in capsys.readouterr().err
    assert main(["figures", str(run), "--capsule", "10", "--limit-test", "200"]) == 2  # a run folder: its best.pt
    assert "--capsule must be a class index in [0, 10), got 10" in capsys.readouterr().err
    asked = []
    plot = figures.plot_perturbations
    monkeypatch.setattr(figures, "plot_perturbations", lambda *args, **kwargs: asked.append(kwargs) or plot(*args, **kwargs))
    assert main(["figures", str(run), "--capsule", "7", "--limit-test", "200", "--examples", "4"]) == 0
    assert asked[0]["capsule"] == 7
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    moved = tmp_path / "moved.pt"  # as if trained on another machine, with its data elsewhere
    torch.save({**checkpoint, "config": {**checkpoint["config"], "data_dir": str(tmp_path / "elsewhere")}}, moved)
    assert main(["figures", str(moved), "--limit-test", "20"]) == 2
    assert (f"the run was trained with the data in {tmp_path / 'elsewhere'}, which is not on this machine: pass "
            f"--data-dir") in capsys.readouterr().err
    assert main(["figures", str(moved), "--limit-test", "20", "--data-dir", str(shared_data), "--out",
                 str(tmp_path / "moved")]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    monkeypatch.setattr(capsnet.cli, "load_checkpoint", lambda path: pytest.fail("loaded before matplotlib was checked"))
    assert main(["figures", str(run), "--out", str(tmp_path / "none")]) == 2
    assert "figures need matplotlib: pip install" in capsys.readouterr().err and not (tmp_path / "none").exists()
    monkeypatch.undo()
    (run / "metrics.jsonl").write_text("")  # as after a Ctrl-C in the first epoch: a checkpoint, no finished epoch
    (run / "figures" / "learning_curve.png").unlink()
    assert main(["figures", str(run / "last.pt"), "--limit-test", "200", "--examples", "4"]) == 0
    assert not (run / "figures" / "learning_curve.png").exists()


def test_segmentation_decodes_each_of_the_two_longest_capsules_on_its_own():
    model, images = tiny_model(image_size=36), torch.rand(5, 1, 36, 36)
    chosen, decoded = figures.segmentation(model, images)
    assert chosen.shape == (5, 2) and decoded.shape == (5, 2, 1, 36, 36)
    lengths = model(images).lengths
    assert (lengths.gather(1, chosen[:, :1]) == lengths.amax(1, keepdim=True)).all()  # longest first
    for k in range(2):
        alone = model(images, chosen[:, k]).reconstructions.view(5, 1, 36, 36)
        torch.testing.assert_close(decoded[:, k], alone)


def test_segmentation_of_colour_images_or_many_objects_draws_a_row_per_capsule(tmp_path, monkeypatch):
    shown, original = {}, figures._show  # (row, column) -> (picture, title)

    def show(axis, picture, title="", **kw):
        place = axis.get_subplotspec()
        shown[place.rowspan.start, place.colspan.start] = (picture, title)
        original(axis, picture, title, **kw)

    monkeypatch.setattr(figures, "_show", show)
    for channels, objects in ((3, 2), (1, 4)):
        shown.clear()
        model, images = tiny_model(in_channels=channels), torch.rand(6, channels, 28, 28)
        labels = torch.stack([torch.randperm(10)[:objects] for _ in range(6)])
        path = figures.plot_segmentation(model, images, labels, tmp_path / "s.png", count=1)
        right, wrong = figures.pick_examples(model, images, labels, 1)
        picked = torch.cat([right, wrong])
        assert png_size(path) == (400, 80 + 110 * (1 + objects))  # the input, then one row per capsule
        chosen, decoded = figures.segmentation(model, images[picked], objects)  # decoded (columns, objects, C, H, W)
        assert sorted(shown) == [(row, column) for row in range(1 + objects) for column in range(len(picked))]
        for column, index in enumerate(picked.tolist()):
            torch.testing.assert_close(shown[0, column][0], images[index])
            assert shown[0, column][1] == "L:(" + ",".join(map(str, labels[index].tolist())) + ")"
            assert shown[1, column][1] == "R:(" + ",".join(map(str, chosen[column].tolist())) + ")"
            for k in range(objects):
                torch.testing.assert_close(shown[1 + k, column][0], decoded[column, k])


def test_colour_overlay_puts_the_first_object_in_red_the_second_in_green_and_clips():
    first, second = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    first[..., 0, 0], first[..., 1, 1] = 0.5, 0.8
    second[..., 0, 1], second[..., 1, 1] = 0.25, 0.9
    rgb = figures.colour_overlay(torch.stack([first, second], 1))
    assert rgb.shape == (1, 3, 2, 2)
    torch.testing.assert_close(rgb[0, 0], torch.tensor([[0.5, 0.0], [0.0, 0.8]]))
    torch.testing.assert_close(rgb[0, 1], torch.tensor([[0.0, 0.25], [0.0, 0.9]]))
    assert rgb[0, 2].abs().max() == 0
    assert figures.colour_overlay(torch.ones(1, 3, 1, 2, 2)).max() == 1  # blue-ish adds to green: clipped
    with pytest.raises(ValueError, match="up to 3 grey reconstructions"):
        figures.colour_overlay(torch.ones(1, 2, 3, 2, 2))


def test_colour_overlay_over_the_input_shows_it_dimmed_and_grey_beneath_the_colours():
    reconstructions = torch.zeros(1, 2, 1, 2, 2)
    reconstructions[0, 0, 0, 0, 0] = 0.5  # red at the top left
    background = torch.tensor([[[[1.0, 0.4], [0.0, 1.0]]]])
    rgb = figures.colour_overlay(reconstructions, background)
    dimmed = figures._BACKGROUND_WEIGHT * background[0, 0]
    for channel in (1, 2):  # no colour but red anywhere: the grey input alone
        torch.testing.assert_close(rgb[0, channel], dimmed)
    torch.testing.assert_close(rgb[0, 0], dimmed + torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected background of shape \(b, 1, H, W\) = \(1, 1, 2, 2\)"):
        figures.colour_overlay(reconstructions, torch.ones(1, 1, 3, 3))


def test_capsnet_figures_of_a_multimnist_model_draw_the_segmentation(tmp_path, shared_data):
    run = tmp_path / "run"
    assert main(["train", "--model", "capsnet-tiny", "--dataset", "multimnist", "--data-dir", str(shared_data),
                 "--limit-train", "64", "--limit-test", "50", "--batch-size", "32", "--epochs", "1", "--no-progress",
                 "--output-dir", str(run)]) == 0
    assert main(["figures", str(run / "last.pt"), "--limit-test", "100", "--examples", "3"]) == 0
    names = sorted(p.name for p in (run / "figures").iterdir())
    assert names == ["fig4_perturbations.png", "fig5_segmentation.png", "learning_curve.png", "routing_coupling.png"]
    width, height = png_size(run / "figures" / "fig5_segmentation.png")
    # Rows: inputs, decoded, decoded over the inputs; 110 px per example, up to 3 right and 3 wrong.
    assert height == 410 and width % 110 == 0 and 110 <= width <= 660


def test_learning_curves_draw_every_run_and_the_target(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn, original = [], Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: drawn.extend(
        (line.get_label(), list(line.get_ydata())) for line in self.get_lines()) or original(self, *a, **k))
    curves = {"a": [0.02, 0.01, 0.008], "b (affnist-synthetic)": [0.3, 0.25]}
    assert png_size(figures.plot_learning_curves(curves, tmp_path / "c.png", target=0.004)) == (700, 450)
    assert drawn == [("a: 0.80% after 3 epochs", [2.0, 1.0, 0.8]),  # in percent
                     ("b (affnist-synthetic): 25.00% after 2 epochs", [30.0, 25.0]), ("target 0.40%", [0.4, 0.4])]
    drawn.clear()
    figures.plot_learning_curves({"one": [0.5]}, tmp_path / "e.png")
    assert drawn == [("one: 50.00% after 1 epoch", [50.0])]
    drawn.clear()
    figures.plot_learning_curves({"x": [0.5, 0.4], "y": [0.5, 0.3], "z": [0.5, 0.4]}, tmp_path / "f.png")
    assert [label for label, _ in drawn] == ["x: 40.00% after 2 epochs", "y: 30.00% after 2 epochs",
                                             "z: 40.00% after 2 epochs (the same as x)"]
    for bad, message in (({"a": []}, "'a' has no epochs to draw"), ({}, "no curves to draw")):
        with pytest.raises(ValueError, match=message):
            figures.plot_learning_curves(bad, tmp_path / "d.png")
    with pytest.raises(ValueError, match="the target must be a positive error, got 0"):
        figures.plot_learning_curves(curves, tmp_path / "d.png", target=0)


def write_metrics(run, errors, **extra):
    run.mkdir(parents=True)
    lines = [{"epoch": epoch, "test_error": error, **{k: v[epoch - 1] for k, v in extra.items()}}
             for epoch, error in enumerate(errors, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_capsnet_curves_draws_each_error_of_each_run_folder(tmp_path, capsys, monkeypatch):
    write_metrics(tmp_path / "mnist", [0.02, 0.01])
    write_metrics(tmp_path / "affine", [0.03, 0.02, 0.015], **{"affnist-synthetic_error": [0.4, 0.3, 0.25]})
    out = tmp_path / "curves.png"
    runs = [str(tmp_path / "mnist"), str(tmp_path / "affine")]
    assert main(["curves", *runs, "--out", str(out), "--target", "0.4"]) == 0
    assert png_size(out) == (700, 450)
    assert f"wrote {out}: mnist, affine, affine (affnist-synthetic)" in capsys.readouterr().out
    assert main(["curves", str(tmp_path / "mnist"), "--labels", "CPU", "--out", str(out)]) == 0
    assert f"wrote {out}: CPU\n" in capsys.readouterr().out
    assert main(["curves", str(tmp_path / "mnist"), "--target", "-1", "--out", str(out)]) == 2
    assert "--target must be a test error in percent, above 0 and below 100, got -1.0" in capsys.readouterr().err
    assert main(["curves", str(tmp_path / "mnist"), "--labels", "a", "b", "--out", str(out)]) == 2
    assert "--labels names 2 runs, but 1 run folders were given" in capsys.readouterr().err
    assert main(["curves", str(tmp_path), "--out", str(out)]) == 2
    assert f"{tmp_path} has no metrics.jsonl: not a run folder" in capsys.readouterr().err
    write_metrics(tmp_path / "other" / "mnist", [0.05])
    assert main(["curves", str(tmp_path / "mnist"), str(tmp_path / "other" / "mnist"), "--out", str(out)]) == 2
    assert "several runs would share the label 'mnist': name them with --labels" in capsys.readouterr().err
    write_metrics(tmp_path / "quick", [0.1, 0.05], test_examples=[500, 500])
    (tmp_path / "quick" / "config.json").write_text('{"limit_test": 500}')
    write_metrics(tmp_path / "all", [0.1], test_examples=[10000])
    (tmp_path / "all" / "config.json").write_text('{"limit_test": 20000}')  # above the test set's size: no cut
    assert main(["curves", str(tmp_path / "quick"), str(tmp_path / "all"), "--out", str(out)]) == 0
    assert f"wrote {out}: quick, first 500 test images, all\n" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "quick")
    assert main(["curves", ".", "--out", str(out)]) == 0  # "." is named after the folder it stands for
    assert f"wrote {out}: quick, first 500 test images\n" in capsys.readouterr().out
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "metrics.jsonl").write_text('{"epoch": 1, "test_er')  # torn by a crash
    assert main(["curves", str(tmp_path / "started"), "--out", str(out)]) == 2
    assert "started has no finished epoch yet" in capsys.readouterr().err


def test_routing_colours_centre_on_uniform_coupling_and_do_not_stretch_rounding_noise(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    scales, imshow = [], Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda self, data, **kw: scales.append((kw.get("vmin"), kw.get("vmax")))
                        or imshow(self, data, **kw))
    one_pass = tiny_model(routing_iterations=1)  # its coupling is uniform: any pattern would be noise
    figures.plot_coupling(one_pass, torch.rand(1, 28, 28), tmp_path / "c.png")
    assert scales[0] == (0, 1) and scales[1:] == [(pytest.approx(0.09), pytest.approx(0.11))] * 10  # input, maps


def test_learning_curve_marks_the_epoch_of_the_checkpoint_drawn(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    lines, axvline = [], Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **kw: lines.append((x, kw["label"])) or axvline(self, x, **kw))
    figures.plot_learning_curves({"run": [0.02, 0.01, 0.012]}, tmp_path / "c.png", checkpoint_epoch=2)
    figures.plot_learning_curves({"run": [0.02]}, tmp_path / "d.png", checkpoint_epoch=0)  # saved within epoch 1
    assert lines == [(2, "this checkpoint: after epoch 2")]


def test_fig4_of_another_capsule_than_the_longest_says_what_the_model_predicts(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    titles, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw))
    model, image = tiny_model(), torch.rand(1, 28, 28)
    with torch.no_grad():
        lengths = model(image.unsqueeze(0)).lengths[0]
    longest, other = int(lengths.argmax()), int(lengths.argmin())
    figures.plot_perturbations(model, image, tmp_path / "a.png")
    figures.plot_perturbations(model, image, tmp_path / "b.png", capsule=other, classes=[f"c{k}" for k in range(10)])
    assert titles[0].startswith(f"the longest capsule, of class {longest} (length {float(lengths[longest]):.2f}),")
    assert titles[1].startswith(f"the capsule of class c{other} (length {float(lengths[other]):.2f}; the model "
                                f"predicts\nc{longest}, length {float(lengths[longest]):.2f}),")
    with pytest.raises(ValueError, match="^count must be an integer >= 1, got 0$"):
        figures.plot_reconstructions(model, image.unsqueeze(0), torch.tensor([1]), tmp_path / "c.png", count=0)
    with pytest.raises(ValueError, match="^no images to draw$"):
        figures.plot_reconstructions(model, image.unsqueeze(0)[:0], torch.tensor([], dtype=torch.long), tmp_path / "c.png")
