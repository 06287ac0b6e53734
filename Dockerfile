# Multi-stage build: compile with the Rust toolchain, run on a slim image as a non-root user.
#   docker build -t gatehouse .
#   docker run -p 8080:8080 -v "$PWD/policy-repo:/repo:ro" -v gatehouse-data:/data gatehouse
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# SQLite's build flags (fdatasync): see .cargo/config.toml.
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY examples ./examples
RUN cargo build --release --locked --bin gatehouse

FROM debian:bookworm-slim
# Exactly the packages of deploy/runtime-packages.txt (libssl3 for git2's https, ca-certificates),
# then the non-root user gatehouse (uid/gid 10001, home /data), /repo, /data and /etc/gitconfig
# (safe.directory: /repo is mounted read-only and owned by someone else). deploy/runtime-setup.sh
# does both; scripts/image-test.sh runs the same script with the same list in a debootstrapped
# bookworm root and starts the binary there, as this image runs it.
COPY deploy/runtime-packages.txt deploy/runtime-setup.sh /tmp/gatehouse-setup/
RUN sh /tmp/gatehouse-setup/runtime-setup.sh packages /tmp/gatehouse-setup/runtime-packages.txt \
 && sh /tmp/gatehouse-setup/runtime-setup.sh user \
 && rm -rf /tmp/gatehouse-setup
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
USER 10001:10001
# /repo: the policy repository (mount it read-only); /data: the state database.
VOLUME ["/repo", "/data"]
# 8080: MCP (/mcp, /mcp/<server>) and the probes /healthz and /readyz. The admin listener
# (/status, /metrics, POST /-/reconcile) stays on a free loopback port by default, its address in
# /data/admin.addr (`docker exec … gatehouse status --data-dir /data` reads it); to publish it,
# add e.g. `--admin-listen 0.0.0.0:9090` to the command and publish 9090.
EXPOSE 8080
ENTRYPOINT ["gatehouse"]
CMD ["serve", "--repo", "/repo", "--data-dir", "/data", "--listen", "0.0.0.0:8080"]
