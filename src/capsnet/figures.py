"""What the capsules learned, as pictures: the paper's Figures 3 and 4 and the routing coupling coefficients.

The ``*_grid`` / ``*_maps`` functions compute the pictures' contents as tensors (pure PyTorch, testable);
the ``plot_*`` functions draw them with matplotlib (``pip install "capsnet[figures]"``) and write PNG files.
``capsnet figures CHECKPOINT`` writes all of them for a trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import capsule_lengths
from .models import CapsNet

__all__ = [
    "PERTURBATIONS", "perturbation_grid", "coupling_maps", "pick_examples",
    "plot_reconstructions", "plot_perturbations", "plot_coupling",
]

# Fig. 4 of the paper: each dimension of the winning capsule moved from -0.25 to 0.25 in steps of 0.05.
PERTURBATIONS = torch.arange(-5, 6) * 0.05  # exact 0 in the middle


def _require_decoder(model: CapsNet) -> None:
    if model.decoder is None:
        raise ValueError("this model was trained without the reconstruction decoder: there is nothing to draw")


@torch.no_grad()
def pick_examples(model: CapsNet, images: Tensor, labels: Tensor, count: int, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Indices of the first ``count`` correctly classified and ``count`` misclassified examples (fewer if the
    data runs out); reads ``images`` in batches only until both are found.

    Shape:
        ``images``: ``(n, C, H, W)`` in [0, 1]; ``labels``: ``(n,)`` -> two index tensors.
    """
    right, wrong = [], []
    for start in range(0, len(labels), batch_size):
        hits = model(images[start : start + batch_size]).lengths.argmax(-1) == labels[start : start + batch_size]
        right.append(hits.nonzero().flatten() + start)
        wrong.append((~hits).nonzero().flatten() + start)
        if sum(map(len, right)) >= count and sum(map(len, wrong)) >= count:
            break
    return torch.cat(right)[:count], torch.cat(wrong)[:count]


@torch.no_grad()
def perturbation_grid(model: CapsNet, image: Tensor, deltas: Tensor = PERTURBATIONS) -> Tensor:
    """Decode the winning capsule of ``image`` with each of its dimensions moved by each of ``deltas``.

    Returns ``(out_dim, len(deltas), C, H, W)``: row ``d`` varies dimension ``d`` only; the column of delta
    0 is the plain reconstruction.
    """
    _require_decoder(model)
    poses = model(image.unsqueeze(0)).poses[0]  # (j, out_dim)
    winner = int(capsule_lengths(poses).argmax())
    dims = poses.shape[-1]
    # (out_dim, deltas, j, out_dim): every copy of the poses with one entry of the winner changed
    varied = poses.expand(dims, len(deltas), *poses.shape).clone()
    varied[torch.arange(dims), :, winner, torch.arange(dims)] += deltas.to(poses)
    targets = torch.full((dims * len(deltas),), winner, device=poses.device)
    decoded = model.decoder(varied.flatten(0, 1), targets)  # (out_dim * deltas, C * H * W)
    return decoded.view(dims, len(deltas), model.in_channels, *model.image_size)


@torch.no_grad()
def coupling_maps(model: CapsNet, image: Tensor) -> Tensor:
    """What the primary capsules send to each class: ``c[i, j] * |u_i|`` summed over capsule types.

    Returns ``(num_classes, h, w)`` over the primary capsules' grid. Since ``sum_j c[i, j] = 1``, the maps
    of all classes add up to the primary capsules' total length at each position.
    """
    features = F.relu(model.conv1(image.unsqueeze(0)))
    primary = model.primary(features)[0]  # (i, primary_dim)
    coupling = model(image.unsqueeze(0)).coupling[0]  # (i, j)
    h, w = model.primary.output_grid(features.shape[-2], features.shape[-1])
    sent = coupling * capsule_lengths(primary).unsqueeze(-1)  # (i, j)
    return sent.view(model.primary.types, h, w, -1).sum(0).permute(2, 0, 1)  # (j, h, w)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('figures need matplotlib: pip install "capsnet[figures]"') from None
    return plt


def _show(axis: Any, image: Tensor, title: str = "", cmap: str = "gray") -> None:
    axis.imshow(image.squeeze(0).cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


@torch.no_grad()
def plot_reconstructions(model: CapsNet, images: Tensor, labels: Tensor, path: str | Path, *,
                         classes: list[str] | None = None, count: int = 8) -> Path:
    """Fig. 3: inputs above their reconstructions from the predicted capsule, right and wrong predictions.

    Each column shows label and prediction ``(l:3, p:5)``; misclassified examples are marked in red.
    """
    _require_decoder(model)
    model.eval()
    right, wrong = pick_examples(model, images, labels, count)
    picked = torch.cat([right, wrong])
    output = model(images[picked])
    reconstructions = output.reconstructions.view(-1, model.in_channels, *model.image_size)
    names = classes or [str(k) for k in range(output.lengths.shape[1])]
    plt = _pyplot()
    figure, axes = plt.subplots(2, len(picked), figsize=(1.1 * len(picked), 2.6), squeeze=False)
    for column, index in enumerate(picked.tolist()):
        predicted = int(output.lengths[column].argmax())
        _show(axes[0, column], images[index], f"l:{names[int(labels[index])]}\np:{names[predicted]}")
        if predicted != int(labels[index]):
            axes[0, column].title.set_color("red")
        _show(axes[1, column], reconstructions[column])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    figure.suptitle(f"{len(right)} right, {len(wrong)} wrong (red)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


@torch.no_grad()
def plot_perturbations(model: CapsNet, image: Tensor, path: str | Path) -> Path:
    """Fig. 4: one row per dimension of the winning capsule, columns from -0.25 to +0.25 in steps of 0.05."""
    model.eval()
    grid = perturbation_grid(model, image)  # (out_dim, deltas, C, H, W)
    rows, columns = grid.shape[:2]
    plt = _pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(0.6 * columns + 0.6, 0.6 * rows + 0.4), squeeze=False)
    for row in range(rows):
        for column in range(columns):
            title = f"{PERTURBATIONS[column]:+.2f}" if row == 0 else ""
            _show(axes[row, column], grid[row, column], title)
        axes[row, 0].set_ylabel(str(row), fontsize=7, rotation=0, labelpad=8)
    figure.tight_layout(pad=0.2)
    return _save(figure, path)


@torch.no_grad()
def plot_coupling(model: CapsNet, image: Tensor, path: str | Path, *, classes: list[str] | None = None) -> Path:
    """The routing of one example: per class, the share of the primary capsules' output at each grid position
    that goes to it (``coupling_maps`` over their sum; 1 / classes everywhere would be uniform coupling)."""
    model.eval()
    amounts = coupling_maps(model, image)  # (j, h, w)
    maps = amounts / amounts.sum(0).clamp_min(1e-12)
    lengths = model(image.unsqueeze(0)).lengths[0]
    names = classes or [str(k) for k in range(maps.shape[0])]
    plt = _pyplot()
    figure, axes = plt.subplots(1, maps.shape[0] + 1, figsize=(1.3 * (maps.shape[0] + 1), 1.9), squeeze=False)
    _show(axes[0, 0], image, "input")
    low, high = float(maps.min()), float(maps.max())  # trained couplings stay near uniform: stretch the colours
    for j in range(maps.shape[0]):
        axes[0, j + 1].imshow(maps[j].cpu().numpy(), cmap="viridis", vmin=low, vmax=high)
        axes[0, j + 1].set_xticks([])
        axes[0, j + 1].set_yticks([])
        axes[0, j + 1].set_title(f"{names[j]}\n|v|={float(lengths[j]):.2f}", fontsize=8)
    figure.suptitle(f"routing: share of the primary capsules' output sent to each class at each of the "
                    f"{maps.shape[1]}x{maps.shape[2]} positions; colours from {low:.3f} (dark) to {high:.3f} (bright), "
                    f"uniform coupling: {1 / maps.shape[0]:.3f}", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
