# kad-node built from source inside Docker: for machines without a Linux Rust toolchain (macOS).
# Needs a registry for the Rust image. Produces the same scratch image as ../Dockerfile:
#   docker build -f docker/source.Dockerfile -t kad-testbed/kad-node:dev .
# (docker compose builds it this way when the image is missing.) The crawler's image, from the
# same build: docker build -f docker/source.Dockerfile --target crawl -t kad-testbed/crawl:dev .
FROM rust:1.95-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# Static glibc for the machine's own architecture. --target keeps the flag off build scripts and
# proc-macros, which must stay dynamic.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && CARGO_TARGET_DIR=/target \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" -p kad-node -p testbed-crawl \
 && cp "/target/$target/release/kad-node" /kad-node \
 && cp "/target/$target/release/testbed-crawl" /testbed-crawl

FROM scratch AS crawl
COPY --from=build /testbed-crawl /testbed-crawl
USER 65532:65532
ENTRYPOINT ["/testbed-crawl"]

FROM scratch
COPY --from=build /kad-node /kad-node
COPY --chown=65532:65532 docker/tmp/ /tmp/
USER 65532:65532
ENV KAD_HEALTH_FILE=/tmp/kad-node.health
EXPOSE 4001/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/kad-node", "health"]
ENTRYPOINT ["/kad-node"]
