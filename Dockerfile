# teal: one static binary on a distroless base, run as a non-root user.
#   docker build -t teal:0.1.0 .
# scripts/image writes the same image without Docker, a registry or a base image
# (an OCI archive for the real node of scripts/dev-cluster); a test checks that the
# runtime stage below and that script agree.
# Builder: Rust on Debian with the musl target; scripts/static-binary builds
# the static executable and checks it (ELF statically linked, runs in an
# empty chroot as uid 65532) before it goes into the image.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools file \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN TEAL_STATIC_TARGET=musl scripts/static-binary /out

# Runtime: distroless "static" (CA roots, /etc/passwd with nonroot = 65532,
# time zones; no shell, no libc, no package manager).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/teal /usr/local/bin/teal
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/teal"]
CMD ["controller"]
