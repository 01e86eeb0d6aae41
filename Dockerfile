# syntax=docker/dockerfile:1
#
# One image for every part of Federizer; its entrypoint is the `federizer` command:
#   docker run IMAGE auth | mailbox | webmail | operator run | operator render -f - | user ... | --help
#
# Build (from the repository root; see docs/operations.md):
#   docker build -t ghcr.io/federizer/federizer:0.1.0 .
#
# Node 22 LTS: oidc-provider wants it (it runs on 20 with a warning only). The services run from their
# TypeScript sources through tsx, which caches its output under /tmp: give /tmp a writable volume when the
# root filesystem is read-only (the operator's Deployments and the chart do).

ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# better-sqlite3 compiles from source where no prebuilt binary matches the platform.
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
# Manifests first, so that the dependency layer is rebuilt only when they change.
COPY package.json package-lock.json .npmrc ./
COPY services/protocol/package.json services/protocol/
COPY services/common/package.json services/common/
COPY services/auth/package.json services/auth/
COPY services/mailbox/package.json services/mailbox/
COPY services/cli/package.json services/cli/
COPY operator/package.json operator/
COPY webmail/package.json webmail/
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build -w webmail \
  && npm prune --omit=dev --no-audit --no-fund \
  && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
RUN groupadd --system --gid 10001 federizer \
  && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin federizer
# Owned by root and not writable by the service user: the code cannot be changed by what runs it.
COPY --from=build --chown=root:root /app /app
RUN ln -s /app/services/cli/bin/federizer.js /usr/local/bin/federizer
# Numeric, so that runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["federizer"]
CMD ["--help"]
