# syntax=docker/dockerfile:1
#
# One image for every part of Federizer; its entrypoint is the `federizer` command:
#   docker run IMAGE auth | mailbox | webmail | operator run | operator render -f - | user ... | --help
#
# Build (from the repository root; see docs/operations.md):
#   docker build -t ghcr.io/federizer/federizer:0.1.0 .
#
# Node 22 LTS: oidc-provider wants it (it runs on 20 with a warning only). The image runs the production
# bundle that `npm run build` writes to dist/ (scripts/build.ts): plain ES modules, no tsx and no TypeScript
# sources, so nothing is compiled or cached at run time and the root filesystem can be read-only.

ARG NODE_IMAGE=node:22-bookworm-slim

# The manifests and a compiler: better-sqlite3 compiles from source where no prebuilt binary matches the
# platform. Both stages below install from here, so the layer is rebuilt only when a manifest changes.
FROM ${NODE_IMAGE} AS manifests
WORKDIR /app
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc ./
COPY services/protocol/package.json services/protocol/
COPY services/common/package.json services/common/
COPY services/auth/package.json services/auth/
COPY services/mailbox/package.json services/mailbox/
COPY services/cli/package.json services/cli/
COPY operator/package.json operator/
COPY webmail/package.json webmail/

# The bundle and the webmail, built with every dependency (esbuild, Vite, TypeScript).
FROM manifests AS build
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

# What the bundle loads from node_modules at run time (scripts/build.ts EXTERNAL: better-sqlite3, knex, pg),
# installed apart so that no build tool reaches the image.
FROM manifests AS production-dependencies
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
RUN groupadd --system --gid 10001 federizer \
  && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin federizer
# Owned by root and not writable by the service user: the code cannot be changed by what runs it.
COPY --from=production-dependencies --chown=root:root /app/package.json /app/package-lock.json /app/
COPY --from=production-dependencies --chown=root:root /app/node_modules /app/node_modules
COPY --from=build --chown=root:root /app/dist /app/dist
# The bundle reads these beside dist/: the OpenAPI documents the services serve, and the webmail's build
# (`federizer webmail` serves /app/webmail/dist).
COPY --from=build --chown=root:root /app/openapi /app/openapi
COPY --from=build --chown=root:root /app/webmail/dist /app/webmail/dist
# `federizer` on the PATH too, for `kubectl exec ... -- federizer user add ...` (the bundle has a shebang).
RUN ln -s /app/dist/federizer.mjs /usr/local/bin/federizer
# Numeric, so that runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
# 8080: the service's port, as the operator configures every component. 9090: the webmail's /metrics and
# /healthz, on a listener of their own so that the Ingress, which gives the webmail every path, never reaches
# them (`federizer webmail`'s default FEDERIZER_WEBMAIL_METRICS_PORT).
EXPOSE 8080 9090
ENTRYPOINT ["node", "/app/dist/federizer.mjs"]
CMD ["--help"]
