# exo2micro: the image of the docker, podman, singularity and apptainer profiles.
#
# Published for linux/amd64 and linux/arm64 by .github/workflows/release.yml on every release:
#
#   ghcr.io/exo2micro/exo2micro:<version>            (docker, podman)
#   docker://ghcr.io/exo2micro/exo2micro:<version>   (singularity, apptainer)
#
# nextflow.config names that image; `--container` overrides it. To build it yourself, from the
# repository root (the tag the pipeline expects, so no option is needed):
#
#   docker build -t ghcr.io/exo2micro/exo2micro:0.1.0 .
#   singularity build exo2micro-0.1.0.sif docker-daemon://ghcr.io/exo2micro/exo2micro:0.1.0
#
# The package is installed non-editably into site-packages and its source is deleted: the image
# holds only the installed library and the tools of bin/, never depends on a checkout, and the
# tools' own sys.path entry (/opt/exo2micro) holds no exo2micro/ folder that could shadow it.
FROM python:3.11-slim

# The package version (release.yml passes the tag's version; it must equal pyproject.toml's).
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="exo2micro" \
      org.opencontainers.image.description="Align pre/post-stain fluorescence images of mineral samples, subtract the autofluorescence, keep the microbes." \
      org.opencontainers.image.source="https://github.com/exo2micro/exo2micro" \
      org.opencontainers.image.url="https://github.com/exo2micro/exo2micro/pkgs/container/exo2micro" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# procps: `ps`, with which Nextflow measures every task's CPU and peak memory (trace peak_rss)
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps \
    && rm -rf /var/lib/apt/lists/*

# A regular (non-editable) install from a throw-away copy of the sources.
COPY pyproject.toml README.md LICENSE /tmp/exo2micro-src/
COPY exo2micro /tmp/exo2micro-src/exo2micro
RUN pip install --no-cache-dir /tmp/exo2micro-src \
    && rm -rf /tmp/exo2micro-src \
    && python -c "import exo2micro, sys; sys.exit(exo2micro.__version__ != '${VERSION}')"

COPY bin /opt/exo2micro/bin
RUN chmod 755 /opt/exo2micro/bin/*

# bin/ on PATH: Nextflow calls the tools by bare name. Matplotlib needs a writable config dir
# when the container runs as the calling user (docker.runOptions = '-u $(id -u):$(id -g)').
ENV PATH="/opt/exo2micro/bin:${PATH}" \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /tmp
CMD ["exo2micro", "--help"]
