# The developers' single-user image (KubeSpawner): JupyterLab, jupyterhub-singleuser and the
# notebook client `sandbox.client`. It holds no key, no data and no service configuration:
# kernels reach the gate only through the hub's proxy, with their own hub token.
#
#   docker build -f deploy/docker/singleuser.Dockerfile -t registry.example.internal/sandbox-notebook:0.1.0 .
#
# Run from the repository root; .dockerignore keeps the context to the package sources.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sandbox/ sandbox/
COPY notebooks_template/ notebooks_template/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="sandbox-notebook" \
      org.opencontainers.image.description="Privacy-preserving data sandbox: JupyterLab with the notebook client" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# uid 1000 in group users (100): singleuser.uid and singleuser.fsGid of values.yaml
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan --shell /bin/bash jovyan
COPY --from=build /wheels/ /tmp/wheels/
# the `hub` extra: JupyterLab, pandas (jupyterhub-singleuser comes with jupyterhub); the
# notebook templates land in /usr/local/share/sandbox/notebooks_template
RUN pip install --no-cache-dir "$(ls /tmp/wheels/*.whl)[hub]" && rm -rf /tmp/wheels
# no package index inside a session (the network policy blocks it anyway)
ENV PIP_NO_INDEX=1
USER 1000:100
WORKDIR /home/jovyan
EXPOSE 8888
CMD ["jupyterhub-singleuser"]
