"""How good the student is, judged without data: agreement with the teacher, and whether it means anything.

The report's headline figure is an estimate of the real accuracy the
student loses: its top-1 disagreement with the teacher on held-out probe
inputs that no training step saw.  That is only evidence about real inputs
when the probes look like inputs the teacher knows; on noise a teacher tends
to answer one class for everything, and a student that answers the same
"agrees" perfectly while being useless.  So the estimate is withheld, and
the report says why, when the teacher's answers on the probes are not spread
over its classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kegnet_core.distill import agreement, teacher_logits
from kegnet_core.report import Agreement, Quality

# The teacher's classes on the probes must be this spread (normalised entropy)
# for disagreement there to stand for disagreement on real inputs.
MIN_CLASS_BALANCE = 0.9
# Above this disagreement on the probes (points), the loss is large but its size is not
# told: probes the teacher reads confidently overstate a damaged student's loss (Tucker
# alone on the suite's photo CNN: 33.6 points on probes, 13.5 on real photographs).
MAX_ESTIMATED_LOSS = 5.0


def class_balance(classes: torch.Tensor, n_classes: int) -> float:
    """Entropy of the class histogram over log(n_classes): 1 when even, 0 when all one class."""
    counts = torch.bincount(classes.flatten().cpu(), minlength=n_classes).double()
    shares = counts / counts.sum().clamp_min(1)
    entropy = float(-(shares[shares > 0] * shares[shares > 0].log()).sum())
    return entropy / math.log(n_classes) if n_classes > 1 else 1.0


class Probe:
    """Held-out inputs and the teacher's answers on them.

    ``data_like`` says the inputs were made to match statistics of the
    teacher's real training data (its BatchNorm running means and variances);
    only such probes can stand for real inputs.  ``unlike_why`` says why probes that were made
    so still do not.
    """

    def __init__(
        self,
        teacher: nn.Module,
        inputs: torch.Tensor,
        source: str,
        n_classes: int,
        *,
        data_like: bool = False,
        unlike_why: str = "",
    ) -> None:
        self.inputs = inputs
        self.source = source
        self.data_like = data_like
        self.unlike_why = unlike_why  # why inputs matched to the statistics still do not count
        self.classes = teacher_logits(teacher, inputs).argmax(1)
        self.balance = class_balance(self.classes, n_classes)

    def agreement(self, model: nn.Module) -> float:
        return agreement(model, self.inputs, self.classes)


def assess(probe: Probe, student_agreement: float, tucker_agreement: float) -> tuple[Agreement, Quality]:
    """The report's agreement block and its quality estimate from one probe set."""
    block = Agreement(
        student_vs_teacher=round(student_agreement, 5),
        tucker_only_vs_teacher=round(tucker_agreement, 5),
        samples=len(probe.inputs),
        source=probe.source,
    )
    balanced = probe.balance >= MIN_CLASS_BALANCE
    disagreement = 100 * (1 - student_agreement)
    small = disagreement <= MAX_ESTIMATED_LOSS
    trusted = balanced and probe.data_like and small
    if trusted:
        reason = (
            f"top-1 disagreement with the teacher on {len(probe.inputs)} held-out {probe.source} inputs, "
            f"over which the teacher's classes are spread (balance {probe.balance:.2f})"
        )
    elif not probe.data_like and probe.unlike_why:
        reason = f"cannot tell: {probe.unlike_why}"
    elif not probe.data_like:
        reason = (
            f"cannot tell: the teacher has no BatchNorm statistics to make probe inputs like its real "
            f"ones, and agreement on {probe.source} inputs says little about real inputs"
        )
    elif not balanced:
        reason = (
            f"cannot tell: the teacher puts the {len(probe.inputs)} {probe.source} probe inputs mostly in "
            f"a few classes (balance {probe.balance:.2f} < {MIN_CLASS_BALANCE}), so agreement there says "
            "little about real inputs"
        )
    else:
        reason = (
            f"a large loss, of a size the probes cannot tell: the student disagrees with the teacher on "
            f"{disagreement:.1f}% of {len(probe.inputs)} held-out {probe.source} inputs, and such probes "
            f"overstate losses above {MAX_ESTIMATED_LOSS:g} points"
        )
    tucker_disagreement = 100 * (1 - tucker_agreement)
    quality = Quality(
        estimated_loss=round(disagreement, 2) if trusted else None,
        tucker_only_estimated_loss=(
            round(tucker_disagreement, 2) if trusted and tucker_disagreement <= MAX_ESTIMATED_LOSS else None
        ),
        trusted=trusted,
        reason=reason,
        probe_source=probe.source,
        probe_samples=len(probe.inputs),
        class_balance=round(probe.balance, 4),
        details={
            "probe_disagreement": round(100 * (1 - student_agreement), 2),
            "tucker_only_probe_disagreement": round(100 * (1 - tucker_agreement), 2),
        },
    )
    return block, quality
