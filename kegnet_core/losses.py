"""The three KegNet losses and the distillation loss.

The diversity loss of the published code expands the batch to a
``batch x batch x pixels`` tensor (268 MB for 256 MNIST images) to take
pairwise distances.  ``torch.cdist`` computes the same pairwise L1 and squared
L2 distances with ``batch x batch`` memory, with identical values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(y || softmax(M(x))), averaged over the batch; ``labels`` are (soft) one-hot rows.

    For one-hot y this is the cross-entropy, since y log y = 0.
    """
    return F.kl_div(F.log_softmax(logits, dim=1), labels, reduction="batchmean")


def decoder_loss(decoded: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the decoder's estimate of z and z."""
    return F.mse_loss(decoded, noise)


def diversity_loss(noise: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """exp(-mean_ij d_z(i, j) * d_x(i, j)) over all pairs of the batch.

    d_x is the mean absolute difference of two flattened samples and d_z the
    mean squared difference of their noise vectors, as in the paper's code.
    Memory is O(batch^2), never O(batch^2 x pixels).
    """
    flat = samples.flatten(1)  # (B, P)
    dist_x = torch.cdist(flat, flat, p=1) / flat.size(1)  # (B, B)
    dist_z = torch.cdist(noise, noise, p=2).square() / noise.size(1)  # (B, B)
    return torch.exp(-(dist_z * dist_x).mean())


def smoothness_loss(samples: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (total variation, squared).

    An image prior: natural images are mostly smooth, adversarial textures are
    not.  Vectors have no neighbours, so for (B, D) samples this is zero.
    """
    if samples.dim() != 4:
        return samples.new_zeros(())
    down = (samples[:, :, 1:, :] - samples[:, :, :-1, :]).square().mean()
    right = (samples[:, :, :, 1:] - samples[:, :, :, :-1]).square().mean()
    return down + right


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of the softened outputs, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
