# kad-node: the static binary alone, FROM scratch, as a non-root user. (The crawler has its own
# image, docker/crawl.Dockerfile, so the node's stays small.)
#
# Build the binary first (no registry needed; `cargo run -p testbed -- image` does both steps):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu -p kad-node -p testbed-crawl
#   docker build -t kad-testbed/kad-node:dev .
# No Linux toolchain (macOS)? docker/source.Dockerfile builds the same image from source.
FROM scratch

ARG KAD_NODE_BIN=target/x86_64-unknown-linux-gnu/release/kad-node
COPY ${KAD_NODE_BIN} /kad-node
# A /tmp the node's user owns, for the health file when no tmpfs is mounted there
# (docker-compose.yml mounts one, because its root filesystem is read-only).
COPY --chown=65532:65532 docker/tmp/ /tmp/

USER 65532:65532
ENV KAD_HEALTH_FILE=/tmp/kad-node.health
EXPOSE 4001/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/kad-node", "health"]
ENTRYPOINT ["/kad-node"]
