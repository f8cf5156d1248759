#!/usr/bin/env bash
# cargo deny check (licences, advisories, bans, sources) of the workspace and of fuzz/,
# offline: the advisories are the snapshot in deny/advisory-db (see deny.toml), served to
# cargo-deny as a local git repository whose commit carries the snapshot's date, so that
# the check reports the database's real age.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.18.9
if ! cargo deny --version 2>/dev/null | grep -q "$version"; then
    cargo install cargo-deny --version "$version" --locked
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Where cargo-deny looks for its clone of the advisory database's URL (named after the URL).
db="$tmp/db/advisory-db-3157b0e258782691"
mkdir -p "$tmp/db"
cp -r deny/advisory-db "$db"
(
    cd "$db"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="2026-08-21T08:28:40+02:00" GIT_COMMITTER_DATE="2026-08-21T08:28:40+02:00" \
        git -c user.name=snapshot -c user.email=snapshot@invalid commit -q -m "advisory-db snapshot bf5c0d2"
)
sed -e "s|^db-urls = \(.*\)|db-urls = \1\ndb-path = \"$tmp/db\"|" deny.toml >"$tmp/deny.toml"

for manifest in Cargo.toml fuzz/Cargo.toml; do
    echo "cargo deny: $manifest"
    cargo deny --manifest-path "$manifest" check --disable-fetch --config "$tmp/deny.toml"
done
