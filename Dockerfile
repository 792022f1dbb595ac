# syntax=docker/dockerfile:1
#
# One image holding both binaries, sendonce-api (the default command) and
# sendonce-worker:
#
#   docker build -t sendonce:latest .
#   docker run sendonce:latest                   # the API on :8080
#   docker run sendonce:latest sendonce-worker   # a worker, health on :9091
#
# Dependencies are compiled in their own layer (cargo-chef), so a change to
# the sources alone rebuilds only the workspace crates.

# The builder is on bookworm, like the runtime image: a binary linked against
# a newer glibc (e.g. trixie's) would not start on bookworm-slim.
ARG RUST_VERSION=1
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

# The recipe holds only the manifests and Cargo.lock: it, and so the cook
# layer below, changes only when the dependencies do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Same profile, flags and binaries as the real build below, so the cached
# dependencies are resolved with the same features and reused as they are.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
        --bin sendonce-api --bin sendonce-worker
# migrations/ must be in the context: shared/ embeds ../migrations at compile
# time (see shared/build.rs), so the binaries need no files at run time.
COPY . .
RUN cargo build --release --locked --bin sendonce-api --bin sendonce-worker

FROM debian:bookworm-slim AS runtime
# ca-certificates: SMTP over TLS verifies the server against the system
# roots. curl: the HEALTHCHECK below (the binaries have no probe subcommand).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid, so volume ownership and policies can name it.
RUN groupadd --system --gid 10001 sendonce \
    && useradd --system --uid 10001 --gid sendonce --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sendonce
COPY --from=builder /app/target/release/sendonce-api /app/target/release/sendonce-worker /usr/local/bin/
USER 10001:10001
ENV LOG_FORMAT=json
# 8080: the API (API_ADDR). 9090: the API's /healthz, /readyz, /metrics
# (its METRICS_ADDR). 9091: the worker's (METRICS_ADDR).
EXPOSE 8080 9090 9091
# Probes the API. A worker container must override it to port 9091, as
# docker-compose.yml does; /healthz never touches Postgres or Redis.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1
# A CMD, not an ENTRYPOINT, so `sendonce-worker` (or `sendonce-api migrate`)
# given as the command replaces it rather than being appended to it. The
# binary runs as PID 1 and handles SIGTERM itself (graceful shutdown).
CMD ["sendonce-api"]
