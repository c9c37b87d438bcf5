# vigi-turn container image: a drop-in for coturn's (coturn/coturn).
#
#   docker build -t vigi-turn .
#   docker run --rm --network host vigi-turn --listening-port=3478 --min-port=49152 \
#       --max-port=65535 --user=vigiturn:vigisecret123 --realm=vigi.local
#
# Like coturn's image: arguments starting with `-` go to the server, `turnserver` is an alias of
# `vigi-turn`, `$(...)` forms such as `--external-ip=$(detect-external-ip)` are expanded, and
# /etc/coturn/turnserver.conf is read when mounted. See config/docker-entrypoint.sh.

FROM rust:1-bookworm AS build
# DTLS listeners come from the system OpenSSL (`--features dtls`), as coturn's image has them;
# clang and libbpf-dev compile the XDP fast path (build.rs).
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev clang libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependency layer: built from the manifests alone (with stub sources), so that a change
# to vigi-turn's own code does not rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin benches \
    && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/bin/vigi-bench.rs \
    && touch src/lib.rs && echo 'fn main() {}' > benches/proto.rs && cp benches/proto.rs benches/engine.rs \
    && mkdir tests && touch tests/dtls.rs \
    && cargo build --release --locked --features dtls --bin vigi-turn \
    && rm -rf src benches tests
COPY . .
# The stubs' build artifacts are older than the real sources, so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --features dtls --bin vigi-turn \
    && strip target/release/vigi-turn

FROM debian:bookworm-slim
# libssl3 for DTLS; dig for detect-external-ip's DNS lookup (as coturn's image).
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 bind9-dnsutils \
    && rm -rf /var/lib/apt/lists/*
# uid and gid 10001 both (a system group would get the first free gid, 999 on bookworm), so a
# mounted file is made readable with one `chown 10001:10001`.
RUN groupadd --system --gid 10001 vigiturn \
    && useradd --system --uid 10001 --gid vigiturn --no-create-home --shell /usr/sbin/nologin vigiturn \
    && mkdir -p /etc/coturn /etc/vigi-turn
COPY --from=build /src/target/release/vigi-turn /usr/local/bin/vigi-turn
RUN ln -s vigi-turn /usr/local/bin/turnserver
COPY config/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY config/detect-external-ip /usr/local/bin/detect-external-ip
COPY config/healthcheck.sh /usr/local/bin/vigi-turn-healthcheck
COPY config/turnserver.conf /usr/share/doc/vigi-turn/turnserver.conf.example

# Non-root: ports below 1024 then need `--cap-add NET_BIND_SERVICE` (or a higher port).
USER vigiturn:vigiturn
# STUN/TURN over UDP and TCP, and the TLS/DTLS ports coturn's image exposes. The relay range
# (49152-65535 by default) is best served with `network_mode: host`.
EXPOSE 3478 3478/udp 5349 5349/udp
# A STUN Binding request to the listener the server reports in VIGI_TURN_HEALTH_FILE once it
# is bound (so --listening-port, -L and --no-udp are followed; see config/healthcheck.sh).
ENV VIGI_TURN_HEALTH_FILE=/tmp/vigi-turn.health
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/vigi-turn-healthcheck"]
# SIGTERM stops cleanly; `docker kill -s USR1` drains, `docker kill -s HUP` reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["--log-file=stdout"]
