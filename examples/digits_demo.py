"""The main job, end to end, as a user would run it against a kegnet server.

1. Train a small CNN on scikit-learn's bundled 8x8 digits (seconds, no download).
2. Script it to TorchScript: that file is all the service ever sees.
3. Upload it with ``kegnet submit --wait`` and download the compressed student.
4. Score teacher and student on held-out real digits the service never saw.

Usage: python examples/digits_demo.py --url http://127.0.0.1:8000 [--preset default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digits, about 40k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 4, 4)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (B, 64, 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised 1x8x8 images: 1,257 to train on, 540 held out."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - 0.3) / 0.4
    labels = torch.tensor(data.target)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.3, random_state=seed, stratify=labels
    )
    return train_x, train_y, test_x, test_y


def train_teacher(train_x: torch.Tensor, train_y: torch.Tensor, epochs: int = 40) -> nn.Module:
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module | torch.jit.ScriptModule, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--preset", default="default", choices=["quick", "default", "paper"])
    parser.add_argument("--out", default="examples/out", help="folder for the teacher and student files")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_x, train_y, test_x, test_y = digits_split()
    teacher = train_teacher(train_x, train_y)
    teacher_path = out / "digits_teacher.pt"
    torch.jit.script(teacher).save(str(teacher_path))
    print(
        f"trained a {sum(p.numel() for p in teacher.parameters()):,}-parameter teacher on "
        f"{len(train_x)} digits in {time.perf_counter() - started:.1f} s; saved {teacher_path}"
    )

    student_path = out / "digits_student.pt"
    command = [
        sys.executable,
        "-m",
        "kegnet_cli.main",
        "submit",
        str(teacher_path),
        "--input-shape",
        "1,8,8",
        "--preset",
        args.preset,
        "--wait",
        "-o",
        str(student_path),
        "--url",
        args.url,
    ]
    print("$ kegnet " + " ".join(command[3:]), flush=True)
    if subprocess.run(command).returncode != 0:
        print("the compression job did not succeed", file=sys.stderr)
        return 1

    student = torch.jit.load(str(student_path))
    report = json.loads((out / "digits_student_report.json").read_text())
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    print()
    print(f"held-out real digits ({len(test_x)}), never seen by the service:")
    print(f"  teacher: {accuracy(teacher, test_x, test_y) * 100:6.2f}% with {teacher_params:,} parameters")
    print(f"  student: {accuracy(student, test_x, test_y) * 100:6.2f}% with {student_params:,} parameters")
    print(f"  compression ratio: {teacher_params / student_params:.2f}x")
    print(f"  ranks: {report['ranks']}, prior: {report['prior']}")
    quality = report["quality"]
    if quality["estimated_loss"] is not None:
        print(f"  the report's own estimate of the loss: {quality['estimated_loss']:.2f} points")
    else:
        print(f"  the report's own estimate: {quality['reason']}")
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
