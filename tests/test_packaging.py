"""The wheel ships what a run needs outside the source tree: the report templates (kept in the
top-level ``templates/`` folder, force-included as ``bids_qa/templates``), weights and thresholds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_FILES = sorted(p.name for p in (ROOT / "templates").iterdir() if p.is_file())


def test_the_loader_finds_the_templates_of_the_code_under_test():
    """From a checkout (editable install, ``python -m``) the top-level ``templates/``; from an
    installed wheel (CI installs the project, then runs pytest) the copy inside the package,
    which holds the same files."""
    import bids_qa
    from bids_qa.reports.render import environment, template_folder

    package = Path(bids_qa.__file__).resolve().parent
    installed = package / "templates"
    assert template_folder() == (installed if installed.is_dir() else ROOT / "templates")
    shipped = {p.name for p in template_folder().iterdir() if p.is_file()}
    assert shipped == {p.name for p in (ROOT / "templates").iterdir() if p.is_file()}
    assert {"scan.html", "group.html", "report.css", "scan.js"} <= set(TEMPLATE_FILES)
    assert environment().get_template("scan.html") is not None


@pytest.mark.slow
def test_wheel_ships_the_templates_inside_the_package(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-build-isolation")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = tmp_path.glob("bids_qa-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in TEMPLATE_FILES:
            assert f"bids_qa/templates/{name}" in names, name
        assert not any(n.startswith("templates/") for n in names)
        assert "bids_qa/weights/tiers.safetensors" in names
        assert "bids_qa/data/thresholds.json" in names
        site = tmp_path / "site"
        zf.extractall(site)
    # the installed layout: the loader finds the templates inside the package, not the checkout
    probe = (
        "import bids_qa.reports.render as r; "
        "print(r.template_folder()); r.environment().get_template('scan.html')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == site / "bids_qa" / "templates"
