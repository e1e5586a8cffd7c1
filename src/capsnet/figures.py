"""What the capsules learned, as pictures: the paper's Figures 3, 4 and 5, the routing coupling coefficients,
and how the test error fell during training.

The ``*_grid`` / ``*_maps`` functions compute the pictures' contents as tensors (pure PyTorch, testable);
the ``plot_*`` functions draw them with matplotlib (``pip install "capsnet[figures]"``) and write PNG files.
``capsnet figures CHECKPOINT`` writes all of them for a trained model.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec

import torch
from torch import Tensor

from ._checks import check_class_indices, check_int, check_integer_dtype, check_shape
from .functional import capsule_lengths, hits
from .models import CapsNet, CapsNetOutput

__all__ = [
    "PERTURBATIONS", "perturbation_grid", "coupling_maps", "pick_examples", "segmentation", "colour_overlay",
    "plot_reconstructions", "plot_perturbations", "plot_coupling", "plot_segmentation", "plot_learning_curves",
    "require_matplotlib",
]

# Fig. 4 of the paper: each dimension of the winning capsule moved from -0.25 to 0.25 in steps of 0.05.
PERTURBATIONS = torch.arange(-5, 6) * 0.05  # exact 0 in the middle
# Fig. 5: the reconstruction from the longest capsule in red, the second in green (yellow where they overlap), a
# third in a blue that still shows on black.
_OBJECT_COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.4, 1.0)}
_BACKGROUND_WEIGHT = 0.35
_P = ParamSpec("_P")  # the arguments of a plot_* function after the model


def _require_capsnet(model: CapsNet) -> None:
    """These pictures read a ``CapsNet``'s own parts (its primary capsule grid, decoder, image size)."""
    if not isinstance(model, CapsNet):
        raise TypeError(f"this figure needs a capsnet.CapsNet (its primary capsule grid, decoder and image size), "
                        f"got {type(model).__name__}; pick_examples takes any model whose output has lengths")


def _require_decoder(model: CapsNet) -> None:
    _require_capsnet(model)
    if model.decoder is None:
        raise ValueError("this model was trained without the reconstruction decoder: there is nothing to draw")


@torch.no_grad()
def pick_examples(model: CapsNet, images: Tensor, labels: Tensor, count: int, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Indices of the first ``count`` correctly classified and ``count`` misclassified examples (fewer if the
    data runs out); reads ``images`` in batches only until both are found.

    With ``(n, objects)`` labels (MultiMNIST) an example is right when its longest capsules are its labels.

    Shape:
        ``images``: ``(n, C, H, W)`` in [0, 1]; ``labels``: ``(n,)`` or ``(n, objects)`` -> two index tensors.
    """
    right, wrong = [], []
    for start in range(0, len(labels), batch_size):
        lengths, batch_labels = model(images[start : start + batch_size]).lengths, labels[start : start + batch_size]
        check_integer_dtype(batch_labels, "labels")
        check_class_indices(batch_labels, "labels", lengths.shape[1])  # hits would name them its targets
        correct = hits(lengths, batch_labels)
        right.append(correct.nonzero().flatten() + start)
        wrong.append((~correct).nonzero().flatten() + start)
        if sum(map(len, right)) >= count and sum(map(len, wrong)) >= count:
            break
    return torch.cat(right)[:count], torch.cat(wrong)[:count]


@torch.no_grad()
def perturbation_grid(model: CapsNet, image: Tensor, deltas: Tensor = PERTURBATIONS, *,
                      capsule: int | None = None) -> Tensor:
    """Decode one capsule of ``image``, the longest unless ``capsule`` names a class, with each of its dimensions
    moved by each of ``deltas``.

    Returns ``(out_dim, len(deltas), C, H, W)``: row ``d`` varies dimension ``d`` only; the column of delta
    0 is the plain reconstruction from that capsule.
    """
    _require_decoder(model)
    poses = model(image.unsqueeze(0)).poses[0]  # (j, out_dim)
    return _perturbed(model, poses, _chosen_capsule(poses, capsule), deltas)


def _perturbed(model: CapsNet, poses: Tensor, chosen: int, deltas: Tensor) -> Tensor:
    """``perturbation_grid`` of one image's ``(j, out_dim)`` poses, from the capsule ``chosen``."""
    dims = poses.shape[-1]
    # (out_dim, deltas, j, out_dim): every copy of the poses with one entry of the chosen capsule changed
    varied = poses.expand(dims, len(deltas), *poses.shape).clone()
    varied[torch.arange(dims), :, chosen, torch.arange(dims)] += deltas.to(poses)
    targets = torch.full((dims * len(deltas),), chosen, device=poses.device)
    decoded = model.decoder(varied.flatten(0, 1), targets)  # (out_dim * deltas, C * H * W)
    return decoded.view(dims, len(deltas), model.in_channels, *model.image_size)


def _chosen_capsule(poses: Tensor, capsule: int | None) -> int:
    """``capsule``, checked against the ``(j, d)`` poses, or the longest capsule when it is ``None``."""
    if capsule is None:
        return int(capsule_lengths(poses).argmax())
    if check_int(capsule, "capsule", 0) >= len(poses):
        raise ValueError(f"capsule must be a class index below {len(poses)}, got {capsule}")
    return int(capsule)


@torch.no_grad()
def coupling_maps(model: CapsNet, image: Tensor) -> Tensor:
    """What the primary capsules send to each class: ``c[i, j] * |u_i|`` summed over capsule types.

    Returns ``(num_classes, h, w)`` over the primary capsules' grid. Since ``sum_j c[i, j] = 1``, the maps
    of all classes add up to the primary capsules' total length at each position. ``c`` is the coupling the
    routing returns: for self-attention routing with a learned prior, the softmax before the prior, which the
    routing adds to it to weight the votes.
    """
    _require_capsnet(model)
    return _sent_to_classes(model, model(image.unsqueeze(0)))


def _sent_to_classes(model: CapsNet, output: CapsNetOutput) -> Tensor:
    """``coupling_maps`` from the model's ``output`` for one image."""
    primary, coupling = output.primary[0], output.coupling[0]  # (i, primary_dim), (i, j)
    h, w = model.primary_grid
    sent = coupling * capsule_lengths(primary).unsqueeze(-1)  # (i, j)
    return sent.view(model.primary.types, h, w, -1).sum(0).permute(2, 0, 1)  # (j, h, w)


@torch.no_grad()
def segmentation(model: CapsNet, images: Tensor, objects: int = 2) -> tuple[Tensor, Tensor]:
    """Fig. 5: the ``objects`` longest capsules of each image, each decoded on its own.

    Returns the chosen classes (longest first) and one reconstruction per chosen capsule.

    Shape:
        ``images``: ``(b, C, H, W)`` -> classes ``(b, objects)``, reconstructions ``(b, objects, C, H, W)``.
    """
    _require_decoder(model)
    output = model(images)
    chosen = output.lengths.topk(objects, dim=-1).indices  # (b, objects)
    decoded = model.reconstruct(output.poses, chosen)  # (b, objects, C * H * W)
    return chosen, decoded.view(*chosen.shape, model.in_channels, *model.image_size)


def colour_overlay(reconstructions: Tensor, background: Tensor | None = None) -> Tensor:
    """One RGB picture of up to three grey reconstructions: red, green, blue-ish, added and clipped to 1, over a
    dimmed grey ``background`` (the input) if one is given.

    Shape:
        ``reconstructions``: ``(b, objects, 1, H, W)`` in [0, 1], ``background``: ``(b, 1, H, W)`` -> ``(b, 3, H, W)``.
    """
    objects = reconstructions.shape[1]
    if not _overlays(reconstructions.shape[2], objects):
        raise ValueError(f"colour_overlay takes up to {len(_OBJECT_COLOURS)} grey reconstructions per image, got "
                         f"shape {tuple(reconstructions.shape)}")
    colours = torch.tensor(list(_OBJECT_COLOURS.values())[:objects]).to(reconstructions)  # (objects, 3)
    rgb = torch.einsum("bohw,oc->bchw", reconstructions[:, :, 0], colours)
    if background is not None:
        check_shape(background, "background", "(b, 1, H, W)", 4, (len(rgb), 1, *rgb.shape[2:]))
        rgb = rgb + _BACKGROUND_WEIGHT * background  # dim, so that the colours stand out where they cover it
    return rgb.clamp_(max=1)


def _overlays(channels: int, objects: int) -> bool:
    """Whether ``colour_overlay`` can tell each of ``objects`` reconstructions of ``channels`` apart by colour."""
    return channels == 1 and objects <= len(_OBJECT_COLOURS)


def require_matplotlib() -> None:
    """Raise an ``ImportError`` that says how to install matplotlib, which the ``plot_*`` functions need, unless
    it is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError('figures need matplotlib: pip install "capsnet[figures]" (in a checkout: '
                          'pip install -e ".[figures]")')


# Inches that the titles at 9 points need: the width of a figure of few columns (few classes, few examples).
_TITLE_WIDTH = 4.0
_COUPLING_TITLE_WIDTH = 7.5  # the routing picture's lines


def _figure(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float],
            layout: str | None = None) -> tuple[Any, Any]:
    """A matplotlib figure and its ``(rows, columns)`` array of axes, outside pyplot: the caller's backend and
    pyplot's list of open figures stay as they were (nothing to close, even when saving fails)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout=layout)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _draws_model(plot: Callable[Concatenate[CapsNet, _P], Path]) -> Callable[Concatenate[CapsNet, _P], Path]:
    """For ``plot(model, ...)``: no gradients, and the model in eval mode (a plugin's dropout or batch norm off)
    while it draws, its own mode restored afterwards."""
    @functools.wraps(plot)
    def draw(model: CapsNet, *args: _P.args, **kwargs: _P.kwargs) -> Path:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return plot(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return draw


def _show(axis: Any, image: Tensor, title: str = "", cmap: str = "gray") -> None:
    """Draw a ``(C, H, W)`` image in [0, 1]: RGB for 3 channels, else grey (the mean of its channels)."""
    pixels = image.permute(1, 2, 0) if image.shape[0] == 3 else image.mean(0)
    axis.imshow(pixels.cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


@_draws_model
def plot_reconstructions(model: CapsNet, images: Tensor, labels: Tensor, path: str | Path, *,
                         classes: list[str] | None = None, count: int = 8) -> Path:
    """Fig. 3: inputs above their reconstructions from the predicted capsule, the right predictions in the first
    two rows and the wrong ones (titled in red) in the next two, ``count`` of each at most.

    Each input is titled with its label and the prediction ``(l:3, p:5)``.
    """
    _require_decoder(model)
    check_int(count, "count", 1)
    if len(images) == 0:
        raise ValueError("no images to draw")
    groups = {name: indices for name, indices in zip(("right", "wrong"), pick_examples(model, images, labels, count))
              if len(indices)}  # one of the two at least
    columns = max(map(len, groups.values()))
    figure, axes = _figure(2 * len(groups), columns, figsize=(max(1.1 * columns, _TITLE_WIDTH), 0.4 + 1.25 * 2 * len(groups)))
    for group, (name, indices) in enumerate(groups.items()):
        output = model(images[indices])
        reconstructions = output.reconstructions.view(-1, model.in_channels, *model.image_size)
        names = classes or [str(k) for k in range(output.lengths.shape[1])]
        inputs, decoded = axes[2 * group], axes[2 * group + 1]
        for column, index in enumerate(indices.tolist()):
            predicted = int(output.lengths[column].argmax())
            _show(inputs[column], images[index], f"l:{names[int(labels[index])]}\np:{names[predicted]}")
            if name == "wrong":
                inputs[column].title.set_color("red")
            _show(decoded[column], reconstructions[column])
        for axis in (*inputs[len(indices):], *decoded[len(indices):]):
            axis.axis("off")
        inputs[0].set_ylabel(f"{name}:\ninput", fontsize=8)
        decoded[0].set_ylabel("reconstruction\n(predicted class)", fontsize=8)
    counts = ", ".join(f"{len(indices)} {name}" for name, indices in groups.items())
    figure.suptitle(f"{counts} (red)\nl: label, p: prediction" if "wrong" in groups else
                    f"{counts}\nl: label, p: prediction", fontsize=9)
    figure.tight_layout(h_pad=1.2)  # the wrong inputs' titles clear of the reconstructions above
    return _save(figure, path)


@_draws_model
def plot_perturbations(model: CapsNet, image: Tensor, path: str | Path, *, classes: list[str] | None = None,
                       capsule: int | None = None) -> Path:
    """Fig. 4: one row per dimension of the longest capsule (or of the class ``capsule``), columns from -0.25 to
    +0.25 in steps of 0.05, after a first column with the input image on top; the title names the capsule's class
    (from ``classes`` if given) and its length."""
    _require_decoder(model)
    poses = model(image.unsqueeze(0)).poses[0]  # (j, out_dim)
    chosen = _chosen_capsule(poses, capsule)
    grid = _perturbed(model, poses, chosen, PERTURBATIONS)  # (out_dim, deltas, C, H, W)
    rows, columns = grid.shape[:2]
    height = 0.6 * rows + 0.8
    figure, all_axes = _figure(rows, columns + 1, figsize=(0.6 * columns + 1.2, height))
    _show(all_axes[0, 0], image, "input")
    for axis in all_axes[1:, 0]:
        axis.axis("off")
    axes = all_axes[:, 1:]
    lengths = capsule_lengths(poses)
    names, longest = classes or [str(k) for k in range(len(lengths))], int(lengths.argmax())
    which = (f"the longest capsule, of class {names[chosen]} (length {float(lengths[chosen]):.2f}),"
             if chosen == longest else
             f"the capsule of class {names[chosen]} (length {float(lengths[chosen]):.2f}; the model predicts\n"
             f"{names[longest]}, length {float(lengths[longest]):.2f}),")  # two lines: class names may be long
    title = (f"{which} decoded with one of its {rows} dimensions (row)\n"
             f"moved by the offset on top (column); +0.00: its plain reconstruction")
    figure.suptitle(title, fontsize=8)
    for row in range(rows):
        for column in range(columns):
            title = f"{PERTURBATIONS[column]:+.2f}" if row == 0 else ""
            _show(axes[row, column], grid[row, column], title)
        axes[row, -1].text(1.08, 0.5, str(row), transform=axes[row, -1].transAxes, fontsize=7, ha="left", va="center")
    # Fixed gaps, not tight_layout's: it would keep the column titles' height between every two rows.
    figure.subplots_adjust(left=0.01, right=1 - 0.25 / (0.6 * columns + 1.2), bottom=0.005,
                           top=1 - (0.65 + 0.2 * (title.count("\n") + 1)) / height, wspace=0.06, hspace=0.06)
    return _save(figure, path)


@_draws_model
def plot_coupling(model: CapsNet, image: Tensor, path: str | Path, *, classes: list[str] | None = None) -> Path:
    """The routing of one example: per class, the share of the primary capsules' output at each grid position
    that goes to it (``coupling_maps`` over their sum), on a colour scale centred on uniform coupling (1 / classes,
    white) that stretches no less than +-``_COUPLING_MIN_SPREAD``, so that rounding noise does not look like
    routing."""
    _require_capsnet(model)
    output = model(image.unsqueeze(0))
    amounts = _sent_to_classes(model, output)  # (j, h, w)
    maps = amounts / amounts.sum(0).clamp_min(1e-12)
    lengths = output.lengths[0]
    names = classes or [str(k) for k in range(maps.shape[0])]
    title = (f"routing: share of the primary capsules' output sent to each class at each of the "
             f"{maps.shape[1]}x{maps.shape[2]} positions\n(each sees {_window(model)});\n"
             f"white: uniform coupling, {1 / maps.shape[0]:.3f}; red: more, blue: less (here {float(maps.min()):.3f} "
             f"to {float(maps.max()):.3f})" + _prior_note(model, output.coupling[0]))
    height = 2.1 + 0.17 * title.count("\n")  # room for every line of the title above the class names
    figure, axes = _figure(1, maps.shape[0] + 1, figsize=(max(1.3 * (maps.shape[0] + 1), _COUPLING_TITLE_WIDTH),
                                                          height), layout="constrained")
    _show(axes[0, 0], image, f"input\nprediction {names[int(lengths.argmax())]}")
    uniform = 1 / maps.shape[0]
    spread = max(float((maps - uniform).abs().max()), _COUPLING_MIN_SPREAD)
    for j in range(maps.shape[0]):
        shown = axes[0, j + 1].imshow(maps[j].cpu().numpy(), cmap="RdBu_r", vmin=uniform - spread,
                                      vmax=uniform + spread)
        axes[0, j + 1].set_xticks([])
        axes[0, j + 1].set_yticks([])
        axes[0, j + 1].set_title(f"{names[j]}\n|v|={float(lengths[j]):.2f}", fontsize=8)
    figure.colorbar(shown, ax=axes[0, -1], fraction=0.1, pad=0.08).ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


_COUPLING_MIN_SPREAD = 0.01  # shares within 0.01 of uniform are drawn pale: one routing iteration is exactly uniform


def _window(model: CapsNet) -> str:
    """The input pixels one primary capsule sees through Conv1 and PrimaryCaps, and their step from one to the next."""
    (conv_h, conv_w), (conv_step_h, conv_step_w) = model.conv1.kernel_size, model.conv1.stride
    (primary_h, primary_w), (primary_step_h, primary_step_w) = model.primary.conv.kernel_size, model.primary.conv.stride
    height, width = conv_h + (primary_h - 1) * conv_step_h, conv_w + (primary_w - 1) * conv_step_w
    step_h, step_w = conv_step_h * primary_step_h, conv_step_w * primary_step_w
    step = f"{step_h} px" if step_h == step_w else f"{step_h} px down and {step_w} px across"
    return f"a {height}x{width}-pixel window of the input, {step} from the next"


def _prior_note(model: CapsNet, coupling: Tensor) -> str:
    """Self-attention routing weights the votes by its softmax coupling plus a learned prior; the maps show the
    softmax alone (a share of what is sent only while the weights are positive and sum to 1)."""
    prior = getattr(model.digits.routing, "prior", None)
    if prior is None:
        return ""
    negative = float(((coupling + prior) < 0).float().mean())  # coupling (i, j), prior (i, j)
    return (f"\nthe softmax coupling c alone: the votes are weighted by c + the learned prior,\nwhich is below 0 "
            f"for {negative:.0%} of them here (docs/concepts.md)")


@_draws_model
def plot_segmentation(model: CapsNet, images: Tensor, labels: Tensor, path: str | Path, *,
                      classes: list[str] | None = None, count: int = 8) -> Path:
    """Fig. 5: MultiMNIST inputs above the longest capsules decoded separately.

    Grey inputs of up to three objects get the paper's picture: the decoded capsules in red, green (and blue),
    overlaid, then the same over the input in grey. Inputs in colour, or of more objects, get a row per capsule
    instead, longest first, since colours of their own cannot be told from an overlay's.
    Titles give the labels ``L:(a,b)`` and the decoded classes ``R:(c,d)``; wrong examples are marked in red.

    Shape:
        ``images``: ``(n, C, H, W)`` in [0, 1]; ``labels``: ``(n, objects)``.
    """
    right, wrong = pick_examples(model, images, labels, count)
    picked = torch.cat([right, wrong])
    objects = labels.shape[1]
    chosen, reconstructions = segmentation(model, images[picked], objects=objects)
    rows: dict[str, Tensor] = {"input": images[picked]}
    if _overlays(images.shape[1], objects):
        rows.update({"decoded": colour_overlay(reconstructions),
                     "on the input": colour_overlay(reconstructions, images[picked])})
        key = ", ".join(f"{_ordinal(k).removesuffix(' longest')} {colour}"  # "longest red, 2nd green"
                        for k, colour in enumerate(list(_OBJECT_COLOURS)[:objects]))
    else:
        rows.update({_ordinal(k): reconstructions[:, k] for k in range(objects)})
        key = "a row per capsule decoded"
    names = classes or [str(k) for k in range(model.digits.out_caps)]

    def pair(indices: list[int]) -> str:
        return "(" + ",".join(names[k] for k in indices) + ")"

    figure, axes = _figure(len(rows), len(picked),
                           figsize=(max(1.1 * len(picked), _TITLE_WIDTH), 0.8 + 1.1 * len(rows)))
    for column, index in enumerate(picked.tolist()):
        titles = [f"L:{pair(labels[index].tolist())}", f"R:{pair(chosen[column].tolist())}"]
        for row, (pictures, title) in enumerate(itertools.zip_longest(rows.values(), titles, fillvalue="")):
            _show(axes[row, column], pictures[column], title)
        if column >= len(right):
            axes[1, column].title.set_color("red")
    for row, label in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(f"{len(right)} right, {len(wrong)} wrong (red); {key}", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def _ordinal(rank: int) -> str:
    """The capsule of length rank ``rank`` (0 the longest): "longest", "2nd longest", ..."""
    suffix = {2: "nd", 3: "rd"}.get(rank + 1, "th")  # ranks past 20 do not fit a figure's rows anyway
    return "longest" if rank == 0 else f"{rank + 1}{suffix} longest"


def plot_learning_curves(
    curves: Mapping[str, Sequence[float]], path: str | Path, *, target: float | None = None,
    checkpoint_epoch: int | None = None,
) -> Path:
    """Error after every epoch, one line per entry of ``curves`` (label -> errors as fractions, epoch 1 first),
    on a log scale (late epochs move by hundredths of a percent; linear if an error is 0), with ``target`` (a
    positive fraction) as a dashed line, and ``checkpoint_epoch`` (the epoch a drawn checkpoint was saved after)
    as a dotted vertical line. A curve with the same errors as an earlier one would hide under it: it is drawn
    dashed, and its legend entry names the earlier one."""
    if not curves:
        raise ValueError("no curves to draw")
    for label, errors in curves.items():
        if not errors:
            raise ValueError(f"{label!r} has no epochs to draw")
    if target is not None and not target > 0:
        raise ValueError(f"the target must be a positive error, got {target}")
    figure, axes = _figure(figsize=(7, 4.5))
    axis = axes[0, 0]
    first_with: dict[tuple[float, ...], str] = {}  # errors -> the first label drawn with them
    for label, errors in curves.items():
        twin = first_with.setdefault(tuple(errors), label)
        axis.plot(range(1, len(errors) + 1), [100 * e for e in errors], marker="." if len(errors) < 40 else None,
                  linestyle="-" if twin == label else "--",
                  label=f"{label}: {100 * errors[-1]:.2f}% after {len(errors)} epoch{'' if len(errors) == 1 else 's'}"
                        + ("" if twin == label else f" (the same as {twin})"))
    if target is not None:
        axis.axhline(100 * target, color="black", linestyle="--", linewidth=1, label=f"target {100 * target:.2f}%")
    if checkpoint_epoch:  # a best.pt is often not the last epoch drawn
        axis.axvline(checkpoint_epoch, color="grey", linestyle=":", linewidth=1.5,
                     label=f"this checkpoint: after epoch {checkpoint_epoch}")
    values = [e for errors in curves.values() for e in errors] + ([] if target is None else [target])
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # importable: _figure imported matplotlib

    percent = FuncFormatter(lambda value, _: f"{value:g}%")
    if min(values) > 0:
        axis.set_yscale("log")
        if max(values) < 10 * min(values):  # within a decade only minor ticks fall inside: label them
            axis.yaxis.set_minor_formatter(percent)
    axis.yaxis.set_major_formatter(percent)
    axis.set_ylim(top=min(axis.get_ylim()[1], 100))  # no error above 100%
    axis.set_xlim(0.5, max(len(errors) for errors in curves.values()) + 0.5)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even for a run of one
    axis.set_xlabel("epoch")
    axis.set_ylabel("test error")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="best", framealpha=0.8)
    figure.tight_layout()
    return _save(figure, path)
