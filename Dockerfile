# syntax=docker/dockerfile:1
# jobd's container image: `docker build -t jobd .` (BuildKit, the default builder, is needed
# for the cache mounts).

# Build: Rust >= 1.88 (edition 2024). The protos compile with protox: no system protoc.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cargo registry and the target dir are cache mounts, kept between builds; the binary is
# copied out of the target cache in the same step, as the mount is gone afterwards.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jobd \
    && cp target/release/jobd /usr/local/bin/jobd

# Run: glibc and libgcc, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/jobd /usr/local/bin/jobd
USER 65532:65532
# jobd listens on 127.0.0.1 by default; in a container it must listen on every interface.
ENV JOBD_LISTEN=0.0.0.0:50051
# mimalloc commits arena memory as it is used rather than ahead (see BENCHMARKS.md, fan-out).
ENV MIMALLOC_ARENA_EAGER_COMMIT=0
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/jobd"]
