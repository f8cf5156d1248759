# The mesh's two images, and the demo's, from one build:
#
#   docker build --target proxy        -t ghcr.io/mesh-dev/mesh-proxy:0.1.0 .
#   docker build --target controlplane -t ghcr.io/mesh-dev/mesh-controlplane:0.1.0 .
#   docker build --target demo         -t ghcr.io/mesh-dev/mesh-demo:0.1.0 .
#   docker build --target ingress      -t ghcr.io/mesh-dev/mesh-ingress:0.1.0 .
#
# mesh-proxy is built on its own: built with the others, cargo would unify their features and
# its code layout (bins/proxy/build.rs) would not fit.
#
# `proxy` is the sidecar and, with `mesh-proxy init`, the init container that installs the
# capture rules (so it carries nft and iptables), as linkerd's proxy and proxy-init share a
# release. `controlplane` holds mesh-controller, mesh-injector and meshctl on a distroless base.
# Both run as non-root users: 2102 for the proxy (the uid the capture rules let out; init runs
# as root with NET_ADMIN and NET_RAW only, as the injected securityContext says), 65532 for the
# control plane. `ingress` is mesh-ingress alone, distroless and non-root (65532): it needs no
# firewall tools, and listens on unprivileged ports (8080, 8443) that its Service maps to 80
# and 443. `meshctl install [--ingress] --registry R --version V` names these images.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    mkdir -p /out \
 && cargo build --release --locked -p mesh-proxy \
 && cp target/release/mesh-proxy /out/ \
 && cargo build --release --locked -p mesh-controller -p mesh-injector -p meshctl -p mesh-ingress \
 && cargo build --release --locked -p mesh-examples --bin demo-app \
 && cp target/release/mesh-controller \
       target/release/mesh-injector target/release/meshctl target/release/mesh-ingress \
       target/release/demo-app /out/

FROM debian:bookworm-slim AS proxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 2102 mesh-proxy \
 && useradd --uid 2102 --gid 2102 --no-create-home --shell /usr/sbin/nologin mesh-proxy
COPY --from=build /out/mesh-proxy /mesh-proxy
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/mesh-proxy"]

FROM gcr.io/distroless/cc-debian12:nonroot AS controlplane
COPY --from=build /out/mesh-controller /out/mesh-injector /out/meshctl /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/mesh-controller"]

FROM gcr.io/distroless/cc-debian12:nonroot AS ingress
COPY --from=build /out/mesh-ingress /usr/local/bin/mesh-ingress
USER 65532:65532
EXPOSE 8080 8443 4191
ENTRYPOINT ["/usr/local/bin/mesh-ingress"]

# The demo's parts (deploy/demo/demo.yaml): greeter, names, loadgen.
FROM gcr.io/distroless/cc-debian12:nonroot AS demo
COPY --from=build /out/demo-app /usr/local/bin/demo-app
USER 65532:65532
EXPOSE 50051 50052
ENTRYPOINT ["/usr/local/bin/demo-app"]
