# pg-lifeboat's long-running worker: the Lambda functions' code and PostgreSQL client binaries, run as an
# ECS Fargate task when a backup or restore will not fit a Lambda invocation (chalicelib/fargate.py).
# The task definition overrides the command, e.g. `lifeboat -v backup shop --slot 2026-11-29T03:00:00+00:00`.
#
#   make layers LAYER_ARCH=arm64 && make image ARCH=arm64       # the architecture of the packaged stack
#
# No secrets are built in: the task reads its configuration from SSM and database passwords from Secrets
# Manager at run time, with the task role's permissions.

# Debian 12 (glibc 2.36): the layer's binaries need glibc 2.34 or newer and bring every other library.
FROM python:3.12.12-slim-bookworm

# x86_64 or arm64: which layer zip goes in (the image's platform must match: docker build --platform).
ARG ARCH=x86_64

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LIFEBOAT_PG_ROOTS=/opt/pg \
    LIFEBOAT_CA_BUNDLE=/opt/pg/certs/rds-ca-bundle.pem

WORKDIR /app

# Dependencies first (pinned in requirements.txt), so a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The project itself, for the `lifeboat` entry point ([project.scripts] in pyproject.toml).
COPY pyproject.toml app.py ./
COPY chalicelib ./chalicelib
COPY devstack ./devstack
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

# The PostgreSQL client layer, unpacked under /opt as Lambda does (pg/<major>/bin, pg/lib, pg/certs).
# zipfile does not restore permissions: the modes stored in the zip are applied (pg_dump must stay executable).
COPY layers/dist/pg-clients-${ARCH}.zip /tmp/pg-clients.zip
RUN python -c "import os, zipfile; z = zipfile.ZipFile('/tmp/pg-clients.zip'); [os.chmod(z.extract(i, '/opt'), (i.external_attr >> 16) & 0o777 or 0o644) for i in z.infolist() if not i.is_dir()]" \
    && rm /tmp/pg-clients.zip \
    && for bin in /opt/pg/[0-9]*/bin; do "$bin/pg_dump" --version; done

# An unprivileged user: the task needs no root (it writes only to /tmp, on the ephemeral storage).
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp lifeboat
USER 10001:10001
WORKDIR /tmp

ENTRYPOINT ["lifeboat"]
CMD ["--help"]
