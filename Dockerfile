# taskman node image, and (target garbd) the Galera arbitrator for a third site.
#   docker build -t taskman:latest .
#   docker build --target garbd -t taskman-garbd:latest .
# The node needs only Python and the package; plugins with their own interpreters
# (plugin.toml `python = ...`) are mounted or baked into images built FROM this one.
FROM python:3.11-slim-bookworm AS taskman
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY taskman ./taskman
COPY cluster ./cluster
COPY runner ./runner
COPY plugins ./plugins
COPY config ./config
RUN pip install --no-cache-dir . && rm -rf /src \
    && useradd --system --home-dir /var/lib/taskman --create-home taskman
# Configuration comes from TASKMAN_* variables (see config/examples/node.toml);
# the example plugins ship inside the package.
USER taskman
WORKDIR /var/lib/taskman
ENTRYPOINT ["taskman"]
CMD ["node"]

# The arbitrator site runs one ZooKeeper server and garbd: a Galera member that
# votes in quorum but stores no data (Debian's galera-arbitrator-4 package).
FROM debian:bookworm-slim AS garbd
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends galera-arbitrator-4 \
    && rm -rf /var/lib/apt/lists/*
USER nobody
ENTRYPOINT ["garbd"]
