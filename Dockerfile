# syntax=docker/dockerfile:1.7
#
# One image per Value Engine service, all from this file:
#
#   docker build --build-arg SERVICE=gateway -t value-engine/ve-gateway .
#
# SERVICE is a directory under services/: gateway, normalizer, enricher, rules, clickhouse-sink,
# s3-archiver, invoicer, query-api, schema-registry. The binary is /usr/local/bin/ve-<SERVICE>.
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (dependencies
# in their own cached layer, then the workspace's binaries) -> runtime (distroless, non-root).
# The builder stage does not depend on SERVICE, so building all nine images compiles the
# workspace once; only the last, small stage differs per service.

# Keep in step with rust-toolchain.toml (deploy/tests/test_dockerfile.py checks it).
ARG RUST_VERSION=1.95.0
# The runtime is distroless Debian 12; build on the same Debian so glibc matches.
ARG DEBIAN_SUITE=bookworm
ARG CARGO_CHEF_VERSION=0.1.78
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS chef
ARG RUST_VERSION
ARG CARGO_CHEF_VERSION
# gcc/g++/make: rdkafka's bundled librdkafka and aws-lc (built without cmake); zlib for libz-sys;
# protoc for gRPC code generation.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config zlib1g-dev protobuf-compiler ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Use the image's toolchain even though rust-toolchain.toml lists extra components (rustfmt,
# clippy) that a release build does not need.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is rebuilt when Cargo.toml/Cargo.lock change, not on code edits.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --workspace --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --workspace --bins

FROM builder AS pick
ARG SERVICE
# The runtime config the image starts with: the service's listen addresses on every interface
# instead of loopback (everything else keeps the built-in defaults). Loaded through VE_CONFIG,
# so `--config FILE` and VE_<SERVICE>__* variables still override it.
RUN set -eu; \
    test -n "${SERVICE:-}" || { echo "build with --build-arg SERVICE=<service>" >&2; exit 1; }; \
    test -x "target/release/ve-${SERVICE}" || { echo "no binary ve-${SERVICE} in the workspace" >&2; exit 1; }; \
    mkdir -p /out/bin /out/etc; \
    cp "target/release/ve-${SERVICE}" /out/bin/; \
    ln -s "ve-${SERVICE}" /out/bin/ve-service; \
    defaults="services/${SERVICE}/config/default.toml"; \
    if [ -f "$defaults" ]; then \
      awk '/^\[/ { section = $0 }; \
           /^listen[ \t]*=/ { if (section != printed) { print section; printed = section }; \
                              sub(/"127\.0\.0\.1:/, "\"0.0.0.0:"); print }' "$defaults" > /out/etc/container.toml; \
    else : > /out/etc/container.toml; fi; \
    cat /out/etc/container.toml

FROM ${RUNTIME_IMAGE} AS runtime
ARG SERVICE
LABEL org.opencontainers.image.title="ve-${SERVICE}" \
      org.opencontainers.image.description="Value Engine ${SERVICE} service" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=pick /out/bin/ /usr/local/bin/
# Not under /etc/value-engine, where the Helm chart mounts its ConfigMap.
COPY --from=pick /out/etc/container.toml /usr/local/share/value-engine/container.toml
ENV VE_CONFIG=/usr/local/share/value-engine/container.toml
# distroless "nonroot": uid/gid 65532; numeric so Kubernetes can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ve-service"]
