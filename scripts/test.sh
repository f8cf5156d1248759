#!/usr/bin/env bash
# Passes the tests: formatting, lints, then every test of the workspace.
# Installs what the tests need beyond Rust when it is missing: Python grpcio (the gRPC client
# we did not write, which the interop test drives through the proxy), promtool (which
# checks the metrics exposition) and openssl (whose s_client the mTLS tests use).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
    echo "installing Python grpcio and grpcio-tools for the interop test"
    python3 -m pip install --quiet --disable-pip-version-check grpcio==1.85.4 grpcio-tools==1.85.4
fi

# Installs Debian package $1 (as root, or through sudo). Packages are pinned to their upstream
# version, as Debian 12 ships it ("openssl=3.0.*"), and take the Debian revision the archive
# has: the archive keeps only the newest security fix of each (openssl went 3.0.19 -> 3.0.22
# in this project's life), so an exact pin would break a fresh machine.
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian package prometheus) to check the metrics exposition"
    apt_install "prometheus=2.42.0*"
fi

if ! command -v openssl >/dev/null; then
    echo "installing openssl (the mTLS tests drive openssl s_client against the proxy)"
    apt_install "openssl=3.0.*"
fi

# The capture tests run `mesh-proxy init` in network namespaces under each firewall backend;
# the install test drives the real kubectl.
for tool in "nft:nftables=1.0.6*" "iptables-legacy:iptables=1.8.9*" "ip:iproute2=6.1.0*" \
    "setpriv:util-linux=2.38.1*" "kubectl:kubernetes-client=1.20.5*"; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        echo "installing ${tool##*:} for the capture tests"
        apt_install "${tool##*:}"
    fi
done

# Debug info doubles the target directory and is not needed to run tests.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-0}"

# The benchmark harness's parsers (standard library only, a fraction of a second).
python3 -m unittest discover -s bench/tests -t bench

cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Every fuzz target for 20 seconds from its seed corpus (scripts/fuzz.sh runs them longer),
# then the supply chain: licences, advisories (a vendored snapshot), bans.
FUZZ_DEBUG=1 ./scripts/fuzz.sh 20
./scripts/deny.sh
