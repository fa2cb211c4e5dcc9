# The gate service image: the package and its dependencies, nothing else (no keys, no data,
# no configuration: those come from the Secrets, the ConfigMap and the volumes of
# deploy/kubernetes/sandbox-service.yaml). The same image runs the operator's toolbox pod.
#
#   docker build -f deploy/docker/service.Dockerfile -t registry.example.internal/sandbox-service:0.1.0 .
#
# Run from the repository root; .dockerignore keeps the context to the package sources.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sandbox/ sandbox/
COPY notebooks_template/ notebooks_template/
# the package as a wheel, built the way tests/test_kubernetes.py builds it
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="sandbox-service" \
      org.opencontainers.image.description="Privacy-preserving data sandbox: the gate service" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# uid/gid 10101: the runAsUser/fsGroup of the manifests; no login shell, no home
RUN groupadd --system --gid 10101 sandbox \
    && useradd --system --uid 10101 --gid 10101 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sandbox \
    && install -d -o 10101 -g 10101 -m 0700 /var/lib/sandbox \
    && install -d -m 0755 /etc/sandbox
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER 10101:10101
WORKDIR /var/lib/sandbox
EXPOSE 10101
ENTRYPOINT ["python", "-m", "sandbox.service"]
CMD ["--config", "/etc/sandbox/service.yaml"]
