# teal: one static binary in an empty image.
#   docker build -t teal:0.1.0 .
# Builder: Rust on Debian, building for musl so the binary needs no libc.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin teal \
 && cp target/x86_64-unknown-linux-musl/release/teal /teal

# Runtime: nothing but the binary and CA roots (for HTTPS Prometheus and webhooks).
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /teal /usr/local/bin/teal
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/teal"]
CMD ["controller"]
