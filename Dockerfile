# bids_qa BIDS-App image: `docker run IMAGE BIDS_DIR OUTPUT_DIR participant|group [options]`.
#
# Variants (docs/containers.md has the full story):
#   GPU (default): the official PyTorch CUDA runtime image; torch comes from the base.
#       docker build -t bids_qa:0.1.0 .
#   CPU only: a slim Python base plus the CPU wheel of torch (about 2 GB; the CUDA base is several GB).
#       docker build -t bids_qa:0.1.0-cpu --build-arg BASE=python:3.11-slim \
#           --build-arg TORCH_SPEC=torch==2.13.0 \
#           --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   Offline/air-gapped builds: any local base with python3 and the venv module, e.g. a debootstrap
#   Debian bookworm rootfs imported with `podman import` (scripts/container_test.sh does this).
#
# Nothing is fetched at run time: the models' weights (bids_qa/weights/*.safetensors) are package
# data and nilearn's MNI152 template ships inside the nilearn wheel. Every cache points under /tmp,
# so the image runs read-only (`--read-only`, Singularity) and as any user (`--user UID:GID`).

ARG BASE=pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime
FROM ${BASE}

# Empty TORCH_SPEC: use the torch of the base image (the CUDA default). Set it (e.g. torch==2.13.0)
# on a base without torch; TORCH_INDEX_URL then picks the wheel index (empty: pip's configured one).
ARG TORCH_SPEC=""
ARG TORCH_INDEX_URL=""

# A virtual environment that also sees the base's site-packages (the CUDA torch of the default
# base), so pip never replaces that torch and Debian's externally-managed Python is left alone.
ENV VIRTUAL_ENV=/opt/bids_qa \
    PATH=/opt/bids_qa/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv --system-site-packages "${VIRTUAL_ENV}"

# torch first, so that installing bids_qa (torch>=2.1) finds it and pulls no other build. Every
# RUN chains with && so that a failure fails the build with any builder (buildah ignores SHELL in
# OCI images). TORCH_SPEC carries its own pin (torch==X.Y.Z), which hadolint cannot see.
# hadolint ignore=DL3013
RUN if [ -z "${TORCH_SPEC}" ]; then \
        true; \
    elif [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"; \
    else \
        pip install --no-cache-dir "${TORCH_SPEC}"; \
    fi \
    && python -c "import torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda)"

COPY pyproject.toml README.md /tmp/bids_qa_src/
COPY bids_qa /tmp/bids_qa_src/bids_qa
COPY templates /tmp/bids_qa_src/templates
# A regular (non-editable) install: templates, thresholds and weights land in site-packages.
# The source copy is removed so that only the installed package can be imported.
RUN pip install --no-cache-dir /tmp/bids_qa_src \
    && rm -rf /tmp/bids_qa_src \
    && python -c "import nilearn.datasets as d; d.load_mni152_template(resolution=2)" \
    && python -c "from bids_qa.scoring import REGISTRY; print('scorers:', ', '.join(e.name + ('' if e.available() else ' (no weights)') for e in REGISTRY))" \
    && bids_qa --version

# Run-time environment: caches and temporary files under /tmp (writable in a read-only container
# and under Singularity), no bytecode writes, unbuffered logs, no network look-ups.
ENV HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/bids_qa_cache/matplotlib \
    XDG_CACHE_HOME=/tmp/bids_qa_cache/xdg \
    XDG_CONFIG_HOME=/tmp/bids_qa_cache/config \
    TORCH_HOME=/tmp/bids_qa_cache/torch \
    NILEARN_DATA=/tmp/bids_qa_cache/nilearn_data \
    NUMBA_CACHE_DIR=/tmp/bids_qa_cache/numba \
    TORCHINDUCTOR_CACHE_DIR=/tmp/bids_qa_cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/bids_qa_cache/triton \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Marks this image's own bids_qa for dataset_description.json's GeneratedBy.Container (a pip
# install that merely runs inside some container is not reported as one).
ENV BIDS_QA_IMAGE=bids_qa:0.1.0

WORKDIR /tmp
ENTRYPOINT ["bids_qa"]
CMD ["--help"]

# Labels last: these arguments change with every build and would otherwise invalidate the cached
# layers above them.
ARG VERSION=0.1.0
ARG VCS_REF=""
ARG BUILD_DATE=""
ARG SOURCE_URL=""
ARG BASE
LABEL org.opencontainers.image.title="bids_qa" \
      org.opencontainers.image.description="Label-free artifact QA of structural MRI (T1w, T2w, FLAIR, PDw): a BIDS-App with pretrained models and HTML reports" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.documentation="docs/containers.md"
