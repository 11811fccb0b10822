# exo2micro: the image of the docker, singularity and apptainer profiles (process.container in
# nextflow.config). Build it from the repository root:
#
#   docker build -t exo2micro:0.1.0 .
#   singularity build exo2micro-0.1.0.sif docker-daemon://exo2micro:0.1.0     # for HPC
#
FROM python:3.11-slim

# procps: `ps`, with which Nextflow measures every task's CPU and peak memory (trace peak_rss)
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/exo2micro
COPY pyproject.toml README.md ./
COPY exo2micro ./exo2micro
COPY bin ./bin
RUN pip install --no-cache-dir . \
    && chmod 755 bin/*

# bin/ on PATH: Nextflow calls the tools by bare name. Matplotlib needs a writable config dir
# when the container runs as the calling user (docker.runOptions = '-u $(id -u):$(id -g)').
ENV PATH="/opt/exo2micro/bin:${PATH}" \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

CMD ["exo2micro", "--help"]
