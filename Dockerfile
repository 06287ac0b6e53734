# Multi-stage build: compile with the Rust toolchain, run on a slim image as a non-root user.
#   docker build -t gatehouse .
#   docker run -p 8080:8080 -v "$PWD/policy-repo:/repo:ro" -v gatehouse-data:/data gatehouse
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY examples ./examples
RUN cargo build --release --locked --bin gatehouse

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data gatehouse \
 && mkdir -p /repo /data && chown gatehouse:gatehouse /data \
 # /repo is mounted read-only and owned by someone else: tell libgit2 it is trusted.
 && printf '[safe]\n\tdirectory = *\n' > /etc/gitconfig
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
USER gatehouse
# /repo: the policy repository (mount it read-only); /data: the state database.
VOLUME ["/repo", "/data"]
EXPOSE 8080
ENTRYPOINT ["gatehouse"]
CMD ["serve", "--repo", "/repo", "--data-dir", "/data", "--listen", "0.0.0.0:8080"]
