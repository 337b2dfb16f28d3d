# distilwave images, one Dockerfile, two runtime targets:
#
#   docker build --target train -t distilwave:train .   # the CLI; default: the whole pipeline
#   docker build --target serve -t distilwave:serve .   # the HTTP service on port 8000
#
# CPU by default (CPU-only torch wheels, no CUDA libraries). For NVIDIA GPUs:
#   --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# (docker-compose.gpu.yml does this). An empty TORCH_INDEX_URL takes torch from the default
# package index.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG APP_UID=10001

# ---------------------------------------------------------------------------------------------
# base: python3 and the unprivileged user. Every other stage starts here, so the virtualenv
# built in `build` finds the same interpreter at the same path in the runtime targets.
FROM ${BASE_IMAGE} AS base

ARG APP_UID
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8

# CUDA base images (Ubuntu) come without Python; python:*-slim and Debian bases have it.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid "${APP_UID}" distilwave \
    && useradd --no-log-init --uid "${APP_UID}" --gid distilwave \
        --create-home --home-dir /home/distilwave --shell /usr/sbin/nologin distilwave \
    && mkdir -p /data /artifacts \
    && chown distilwave:distilwave /data /artifacts

# ---------------------------------------------------------------------------------------------
# build: a compiler (pesq ships only an sdist), the virtualenv, the project, the corpus.
FROM base AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG CORPUS_PACKAGE=asterisk-core-sounds-en-wav

# Lists stay in this stage: the corpus is fetched with `apt-get download` below.
# hadolint ignore=DL3008,DL3009
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && include="$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')" \
    && if [ ! -e "${include}/Python.h" ]; then \
        apt-get install -y --no-install-recommends python3-dev; \
    fi

WORKDIR /app

# Dependencies first, read from pyproject.toml (never listed twice), so a code change does not
# reinstall torch. torch and torchaudio come from TORCH_INDEX_URL (the CPU wheels by default).
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && python3 docker/requirements.py torch >/tmp/torch.txt \
    && python3 docker/requirements.py rest >/tmp/rest.txt \
    && pip install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} -r /tmp/torch.txt \
    && pip install -r /tmp/rest.txt \
    && rm /tmp/torch.txt /tmp/rest.txt

# The project itself, installed editable: presets are read from /app/configs beside the code.
COPY configs/ configs/
COPY models/ models/
COPY training/ training/
COPY service/ service/
COPY distilwave/ distilwave/
COPY benchmarks/ benchmarks/
COPY docker/healthcheck.py docker/healthcheck.py
RUN pip install --no-deps --editable . \
    && python3 -m compileall -q models training service distilwave benchmarks \
    && rm -rf distilwave.egg-info build

# The default corpus (Debian's CC-BY-SA-3.0 Asterisk prompts), unpacked and checksummed by the
# project's own `data fetch`, so `distilwave data fetch` in the train image needs no network.
WORKDIR /tmp/corpus
RUN apt-get download "${CORPUS_PACKAGE}" \
    && DISTILWAVE_CACHE=/opt/distilwave distilwave data fetch --deb ./"${CORPUS_PACKAGE}"_*.deb \
    && rm -rf /tmp/corpus

# ---------------------------------------------------------------------------------------------
# runtime: what both targets share; no compiler, no apt lists, no pip cache, no project code
# (each target copies the packages it runs).
FROM base AS runtime

ARG APP_UID

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV HOME=/home/distilwave \
    MPLBACKEND=Agg
USER ${APP_UID}:${APP_UID}

# ---------------------------------------------------------------------------------------------
# train: the CLI. Without arguments it runs the whole pipeline on the baked-in corpus into
# /artifacts (bundle at /artifacts/bundle); any sub-command can be given instead.
FROM runtime AS train

COPY --from=build /app /app
COPY --from=build /opt/distilwave /opt/distilwave
ENV DISTILWAVE_CACHE=/opt/distilwave \
    DISTILWAVE_CORPUS=/opt/distilwave/corpora/asterisk-core-sounds-en-wav/en_US_f_Allison
ENTRYPOINT ["distilwave"]
CMD ["pipeline", "--preset", "cpu-8k", "--run-dir", "/artifacts", "--resume"]

# ---------------------------------------------------------------------------------------------
# serve: uvicorn (through `distilwave serve`, which hands the DISTILWAVE_* settings to it) on
# port 8000. SIGTERM drains: /readyz turns 503, queued work finishes, then the process exits.
# It carries the model, the service and the CLI, not the training code (`distilwave` offers
# serve and generate there).
FROM runtime AS serve

COPY --from=build /app/models /app/models
COPY --from=build /app/service /app/service
COPY --from=build /app/distilwave /app/distilwave
COPY --from=build /app/docker/healthcheck.py /app/docker/healthcheck.py
ENV DISTILWAVE_BUNDLE=/artifacts/bundle \
    DISTILWAVE_HOST=0.0.0.0 \
    DISTILWAVE_PORT=8000
EXPOSE 8000
# Loading the bundle and the warm-up generation take seconds on a CPU; the start period
# leaves room for a large model on a slow machine (a success during it counts at once).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "/app/docker/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["distilwave", "serve"]
