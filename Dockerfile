# The one kuberaft image: the operator (`kuberaft operator`) and the cluster members
# (`kuberaft node`, which the operator's StatefulSets run) are the same binary.
#
#   docker build -t kuberaft:dev .

FROM rust:1.90-bookworm AS build
WORKDIR /src
# Dependencies first, so that a change to the sources does not fetch them again.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/raft_core.rs \
    && cargo fetch --locked
COPY src src
COPY benches benches
# The `dist` profile: the release build with fat LTO (Cargo.toml says what it gains).
RUN touch src/main.rs src/lib.rs && cargo build --profile dist --locked --bin kuberaft \
    && cp target/dist/kuberaft /kuberaft

# Small, no shell, glibc and CA certificates only; runs as the non-root user 65532, the uid
# the operator's pods run as.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kuberaft /usr/local/bin/kuberaft
USER 65532:65532
# Client and peer ports of a member; the operator's metrics port.
EXPOSE 2379 2380 8080
ENTRYPOINT ["/usr/local/bin/kuberaft"]
CMD ["--help"]
