# authgate container image.
#   docker build -t authgate .
#   docker run -p 8080:8080 -p 9901:9901 -v $PWD/config:/etc/authgate:ro authgate
# The config is read from /etc/authgate/authgate.toml (mount your own folder there; relative
# paths inside it, such as the key file or TLS files, resolve against that folder).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin authgate

FROM debian:bookworm-slim
# Upstream TLS trusts the bundled web PKI roots; no system CA package is needed.
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
COPY config/ /etc/authgate/
ENV AUTHGATE_CONFIG=/etc/authgate/authgate.toml \
    # Inside the container the admin listener must be reachable by the orchestrator's probes;
    # /admin/* still needs AUTHGATE_ADMIN_TOKEN.
    AUTHGATE_ADMIN_LISTEN=0.0.0.0:9901
USER 10001:10001
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]
