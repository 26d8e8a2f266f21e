# klantbeeld as a container: the binary is the entrypoint, the example pipeline and its
# SQL models are in /opt/klantbeeld. Build: docker build -t klantbeeld:0.1.0 .
#
# Stage 1: build the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/klantbeeld

# Stage 2: a small runtime with CA certificates for HTTPS to object stores.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/klantbeeld --shell /usr/sbin/nologin klantbeeld
COPY --from=build /src/target/release/klantbeeld /usr/local/bin/klantbeeld
COPY pipelines /opt/klantbeeld/pipelines
COPY sql /opt/klantbeeld/sql
WORKDIR /opt/klantbeeld
USER klantbeeld
# Scratch files and spills go to /tmp; mount a volume there for big runs.
ENV TMPDIR=/tmp
ENTRYPOINT ["klantbeeld"]
CMD ["--help"]
