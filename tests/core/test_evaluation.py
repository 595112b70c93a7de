"""Scoring helpers used by the benchmarks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from kegnet_core.evaluation import accuracy, read_idx


def test_accuracy_counts_top_one_hits_across_batches() -> None:
    # The model answers the first feature's sign: class 1 when positive.
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    images = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 5.0], [-3.0, 1.0], [4.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 0, 1])  # four of five right
    assert accuracy(model, images, labels, batch_size=2) == pytest.approx(0.8)
    assert accuracy(lambda batch: model(batch), images, labels, batch_size=3) == pytest.approx(0.8)


def test_read_idx_reads_a_gzipped_byte_array_and_rejects_other_types(tmp_path: Path) -> None:
    values = bytes(range(6))
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as handle:
        handle.write(struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">2I", 2, 3) + values)
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    floats = tmp_path / "floats"
    floats.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(floats)
