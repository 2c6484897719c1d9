"""The package's shape, checked: module sizes, one direction of imports, one writer, one scorer
interface, one definition of each benchmark metric."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from bids_qa import metrics
from bids_qa.scoring import REGISTRY, Scorer

PACKAGE = Path(__file__).resolve().parent.parent / "bids_qa"
#: Benchmarks and the CLI's ``train`` dispatch may reach training code; inference never does.
MAY_IMPORT_TRAINING = {"evaluate.py"}


def _modules(exclude_training: bool = True) -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not (exclude_training and "training" in p.relative_to(PACKAGE).parts)
    ]


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_module_outside_training_is_over_700_lines():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in _modules()}
    assert sizes and all(n <= 700 for n in sizes.values()), {k: n for k, n in sizes.items() if n > 700}


def test_inference_never_imports_training_code():
    offenders = {
        p.relative_to(PACKAGE).as_posix(): sorted(n for n in _imported(p) if n.startswith("bids_qa.training"))
        for p in _modules()
        if p.name not in MAY_IMPORT_TRAINING
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_models_never_draw_or_write():
    for path in (PACKAGE / "models").glob("*.py"):
        imported = _imported(path)
        assert not any(n.startswith(("matplotlib", "PIL")) for n in imported), path.name
        text = path.read_text(encoding="utf-8")
        assert "savefig" not in text and "os.replace" not in text, path.name


def test_one_atomic_writer():
    """Only bids_qa/io.py renames temporary files over targets (training scripts aside)."""
    writers = [p.relative_to(PACKAGE).as_posix() for p in _modules()
               if "os.replace(" in p.read_text(encoding="utf-8") or "mkstemp" in p.read_text(encoding="utf-8")]
    assert writers == ["io.py"]


def test_every_registered_scorer_derives_the_scorer_base():
    import importlib

    for entry in REGISTRY:
        module, name = entry.target.split(":")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Scorer), entry.target
        assert cls.name == entry.name
        for hook in ("prepare", "score", "score_many"):
            assert callable(getattr(cls, hook))


def test_metrics():
    truth = np.array([1, 1, 0, 0, 0], bool)
    assert metrics.balanced_accuracy(truth, np.array([1, 0, 0, 0, 1], bool)) == pytest.approx(
        0.5 * (0.5 + 2 / 3)
    )
    assert math.isnan(metrics.balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))
    assert metrics.roc_auc(truth, [0.9, 0.8, 0.1, 0.2, 0.3]) == 1.0
    assert metrics.roc_auc(truth, [0.5] * 5) == 0.5
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 15, 40]) == pytest.approx(0.8)
