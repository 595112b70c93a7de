"""The suite's results file: a rerun appends, and the tables read only the latest row per key."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.suite import load_rows


def _row(approach: str, seed: int, accuracy: float) -> dict[str, object]:
    return {"member": "synth-mlp", "student": "6x", "approach": approach, "seed": seed, "accuracy": accuracy}


def test_a_rerun_row_replaces_the_earlier_one_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "suite.jsonl"
    rows = [
        _row("uniform", 0, 0.91),
        _row("uniform", 1, 0.92),
        _row("gaussian", 0, 0.93),
        _row("uniform", 0, 0.95),
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")

    loaded = load_rows(path)

    assert len(loaded) == 3
    by_key = {(row["approach"], row["seed"]): row["accuracy"] for row in loaded}
    assert by_key == {("uniform", 0): 0.95, ("uniform", 1): 0.92, ("gaussian", 0): 0.93}


def test_no_results_file_reads_as_no_rows(tmp_path: Path) -> None:
    assert load_rows(tmp_path / "absent.jsonl") == []
