# testbed-crawl: the static binary alone, FROM scratch, as a non-root user (compose/crawl.yml).
# Built beside the node's image (`cargo run -p testbed -- image` does both):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu -p kad-node -p testbed-crawl
#   docker build -f docker/crawl.Dockerfile -t kad-testbed/crawl:dev .
FROM scratch
ARG KAD_CRAWL_BIN=target/x86_64-unknown-linux-gnu/release/testbed-crawl
COPY ${KAD_CRAWL_BIN} /testbed-crawl
USER 65532:65532
ENTRYPOINT ["/testbed-crawl"]
