# syntax=docker/dockerfile:1
# weir, built in two stages: a Rust image compiles the release binary, a slim Debian image
# runs it as a non-root user. docker-compose.yml builds this for its `weir` and `sim`
# services; `docker build -t weir .` builds it alone.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin weir \
 && cp target/release/weir /usr/local/bin/weir

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/weir /usr/local/bin/weir
COPY config/weir.toml /etc/weir/weir.toml
USER 65532:65532
# Proxy listener and admin listener (/metrics, /healthz, /readyz, /backends).
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["--config", "/etc/weir/weir.toml"]
