# syntax=docker/dockerfile:1
#
# Switchyard image: one image for every role (api, worker, scheduler, migrate, fake-provider, flower);
# the role is the command, e.g. `docker run switchyard worker --queues provider`.

# ---- builder: resolve dependencies and install the package into a virtualenv ----------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the source does not reinstall them. The s3 and
# otel extras too: one image serves a files volume or an S3 bucket, and traces when OTEL_* variables say so.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3'] + p['optional-dependencies']['otel']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the package itself (including switchyard/migrations and its versions/*.py, env.py, script.py.mako, and
# switchyard/defaults: the default config, workflows and models); the check runs outside /src so that it imports
# the installed package, not the source tree.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && cd / && python -c "import switchyard.cli, switchyard.migrations, pathlib, sys; \
v = pathlib.Path(switchyard.migrations.__file__).parent / 'versions'; \
sys.exit(0 if any(v.glob('0*.py')) else 'migrations/versions missing from the installed package')" \
    && python -c "from switchyard.defaults import MODELS_DIR; assert any(MODELS_DIR.glob('*.onnx'))"

# ---- runtime ---------------------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/venv/bin:$PATH"

RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin switchyard

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The compose config; the default config, shared workflows and ONNX models come with the installed package.
# The shipped workflows sit beside the compose config (they name the same models), so the API loads them.
COPY config/ /app/config/
RUN ln -s "$(python -c 'from switchyard.defaults import DEFAULT_WORKFLOWS; print(DEFAULT_WORKFLOWS)')" \
        /app/config/workflows
# SWITCHYARD_DATA_DIR defaults to ./.switchyard (embedded mode keeps its broker and lock files there): writable by
# the app user. So is the files directory docker-compose.yml mounts its `files` volume on (a new named volume takes
# the owner of the image's directory).
RUN mkdir -p /app/.switchyard /var/lib/switchyard/files \
    && chown switchyard:switchyard /app/.switchyard /var/lib/switchyard/files

USER switchyard

EXPOSE 8000

# The API's liveness endpoint; slim has no curl, so Python's urllib. Other roles override this in compose.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

ENTRYPOINT ["switchyard"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
