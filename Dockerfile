# syntax=docker/dockerfile:1
#
# guestgate container image: one static binary on `scratch`, non-root, no shell.
#
#   docker build -t guestgate .        # builds everything from source
#
# The final image takes the binary from the stage named `binary`. To package a
# binary built outside the container build (what deploy/test.sh does on a
# machine that cannot pull base images), replace that stage with a directory
# holding a file named `guestgate`, built the same way:
#
#   bash deploy/build-binary.sh /tmp/gg-bin
#   podman build --no-cache --format docker --build-context binary=/tmp/gg-bin -t guestgate .
#
# (`--build-context` is supported by docker buildx, podman >= 4.2 and
# buildah >= 1.27; the builder stage is then not built at all.)

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# deploy/build-binary.sh links glibc statically: rustls uses ring, there is no
# OpenSSL to link, and the static glibc (>= 2.34) resolves host names through
# its built-in files/dns NSS services, so the binary runs in an empty root
# filesystem. It then lays the code out with Debian's BOLT (bolt-22, from
# bookworm-security) from a training run on loopback (python3).
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bolt-22 python3 \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    RUSTFLAGS="--remap-path-prefix=/src=/build --remap-path-prefix=/usr/local/cargo=/cargo"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash deploy/build-binary.sh /out

# ---------------------------------------------------------------------------
# The binary to ship. Override with `--build-context binary=<dir>`.
FROM scratch AS binary
COPY --from=builder /out/guestgate /guestgate

# ---------------------------------------------------------------------------
FROM scratch AS runtime
LABEL org.opencontainers.image.title="guestgate" \
      org.opencontainers.image.description="Sanitizing reverse proxy for the Genesys Cloud guest chat API" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# /etc/passwd and /etc/group name the non-root user 65532; nsswitch.conf makes
# /etc/hosts win over DNS (Kubernetes hostAliases, --add-host).
COPY deploy/rootfs/ /
COPY --from=binary --chmod=0755 /guestgate /usr/local/bin/guestgate
# Configuration comes only from the environment (GUESTGATE__SECTION__KEY) and
# an optional mounted file passed as `--config /etc/guestgate/guestgate.toml`.
ENV GUESTGATE__SERVER__LISTEN=0.0.0.0:8080 \
    GUESTGATE__ADMIN__LISTEN=0.0.0.0:9901
# 8080: proxy; 9901: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9901
USER 65532:65532
# The binary drains in-flight requests on SIGTERM (server.shutdown_timeout_secs).
STOPSIGNAL SIGTERM
# `guestgate healthcheck` GETs http://127.0.0.1:9901/healthz (the admin
# listener from the same env/config) and exits 0 on 200, 1 otherwise.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/guestgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/guestgate"]
