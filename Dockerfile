# authgate container image.
#   docker build -t authgate .
#   docker run -p 8080:8080 -p 9901:9901 -v $PWD/my-config:/etc/authgate:ro authgate
# The config is read from /etc/authgate/authgate.toml (mount your own folder there; relative
# paths inside it, such as the key file or TLS files, resolve against that folder). The image
# holds the shipped config and an empty key file, never keys: .dockerignore keeps
# config/keys.toml, databases and certificates out of the build context.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The dependency layer: built from the manifest and lock file alone (placeholder sources), so
# a change to authgate's own code rebuilds only authgate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(awk '/^\[\[bench\]\]/ {b = 1; next} b && /^name = / {gsub(/"/, "", $3); print $3; b = 0}' Cargo.toml); do \
           echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked --bin authgate \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
# The placeholder's build is newer than the copied sources: make cargo see them as changed.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin authgate

FROM debian:bookworm-slim
# Upstream TLS trusts the bundled web PKI roots; no system CA package is needed.
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
COPY config/authgate.toml /etc/authgate/authgate.toml
# An empty key file (comments only): `authgate keys add --file /etc/authgate/keys.toml` on a
# mounted, writable folder, or a key file of your own mounted over it.
COPY config/keys.example.toml /etc/authgate/keys.toml
ENV AUTHGATE_CONFIG=/etc/authgate/authgate.toml \
    # Inside the container the admin listener must be reachable by the orchestrator's probes;
    # /admin/* still needs AUTHGATE_ADMIN_TOKEN.
    AUTHGATE_ADMIN_LISTEN=0.0.0.0:9901
USER 10001:10001
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]
