"""Slow, literal transcriptions of the paper used as references by the tests. Not part of the library."""

import itertools

import torch


def squash_reference(s: torch.Tensor) -> torch.Tensor:
    """Eq. 1 of the paper for a single vector, written as printed."""
    norm = torch.sqrt(torch.sum(s * s))
    return (norm**2 / (1 + norm**2)) * s / norm


def routing_reference(u_hat: torch.Tensor, iterations: int, detach_intermediate: bool = False, bias=None):
    """Procedure 1, one example and one pair (i, j) at a time, with explicit loops.

    ``u_hat``: (b, i, j, d). Returns ``v`` (b, j, d) and ``c`` (b, i, j) of the last iteration.
    With ``detach_intermediate`` the predictions are detached in every iteration but the last.
    ``bias`` (j, d), as the official code: added to every ``s[j]`` in every iteration.
    """
    batch, n_in, n_out, dim = u_hat.shape
    vs, cs = [], []
    for n in range(batch):
        logits = [[u_hat.new_zeros(()) for _ in range(n_out)] for _ in range(n_in)]
        for r in range(iterations):
            last = r == iterations - 1
            votes = u_hat[n] if (last or not detach_intermediate) else u_hat[n].detach()
            c = [torch.softmax(torch.stack(logits[i]), dim=0) for i in range(n_in)]  # softmax over j, per i
            v = []
            for j in range(n_out):
                s = sum(c[i][j] * votes[i, j] for i in range(n_in)) + (0 if bias is None else bias[j])
                v.append(squash_reference(s))
            if not last:
                for i in range(n_in):
                    for j in range(n_out):
                        logits[i][j] = logits[i][j] + torch.dot(votes[i, j], v[j])
        vs.append(torch.stack(v))
        cs.append(torch.stack(c))
    return torch.stack(vs), torch.stack(cs)


def self_attention_reference(u_hat: torch.Tensor, prior: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Efficient-CapsNet's FCCaps routing (Mazzia et al. 2021), one example and one higher capsule at a time, with
    the squash of Sabour et al.

    ``u_hat``: (b, i, j, d); ``prior``: (i, j); ``bias``: (j, d). Returns ``v`` (b, j, d) and the softmax ``c``
    (b, i, j); the votes are summed with ``c + prior``.
    """
    batch, n_in, n_out, dim = u_hat.shape
    vs, cs = [], []
    for n in range(batch):
        # The self-attention matrix of the votes for each higher capsule j, and each lower capsule's row sum.
        attention = [u_hat[n, :, j] @ u_hat[n, :, j].T / dim**0.5 for j in range(n_out)]  # j x (i, i)
        agreement = torch.stack([attention[j].sum(dim=1) for j in range(n_out)], dim=1)  # (i, j)
        c = torch.stack([torch.softmax(agreement[i], dim=0) for i in range(n_in)])  # softmax over j, per i
        weights = c if prior is None else c + prior
        v = []
        for j in range(n_out):
            s = sum(weights[i, j] * u_hat[n, i, j] for i in range(n_in)) + (0 if bias is None else bias[j])
            v.append(squash_reference(s))
        vs.append(torch.stack(v))
        cs.append(c)
    return torch.stack(vs), torch.stack(cs)


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Reference: move the content of ``x`` right by ``dx`` and down by ``dy``, zero-filling, by slicing."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def recover_shifts(x: torch.Tensor, y: torch.Tensor, max_shift: int) -> list[tuple[int, int]]:
    """For each example, the one (dx, dy) within ``max_shift`` that maps ``x`` to ``y``; fails if none or several."""
    candidates = list(itertools.product(range(-max_shift, max_shift + 1), repeat=2))
    # (candidates, b): does candidate k reproduce example n exactly?
    matches = torch.stack([(shifted(x, dx, dy) == y).flatten(1).all(1) for dx, dy in candidates])
    per_example = matches.sum(0)
    assert per_example.eq(1).all(), f"examples matching no or several shifts: {per_example.ne(1).nonzero().tolist()}"
    return [candidates[k] for k in matches.int().argmax(0).tolist()]
