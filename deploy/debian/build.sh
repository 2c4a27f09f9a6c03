#!/usr/bin/env bash
# Builds the Debian package from a built binary:
#   deploy/debian/build.sh [BINARY] [OUT_DIR]
# (defaults: target/release/meshgate, target/debian). Installs the binary,
# the hardened systemd unit, a commented example config, the README, the
# shell completions (bash, zsh, fish) and the man pages;
# the package's scripts create the system user and enable nothing until
# /etc/meshgate/meshgate.toml exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/release/meshgate}"
out="${2:-$root/target/debian}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/gateway/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

chmod 0755 "$stage"
install -D -m 0755 "$bin" "$stage/usr/bin/meshgate"
# Without its debug sections (the release profile keeps them for profiles).
strip --strip-debug "$stage/usr/bin/meshgate"
install -D -m 0644 "$root/deploy/systemd/meshgate.service" "$stage/lib/systemd/system/meshgate.service"
install -D -m 0644 "$root/deploy/meshgate.toml.example" "$stage/etc/meshgate/meshgate.toml.example"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/meshgate/README.md"
install -D -m 0644 "$root/deploy/prometheus/meshgate-rules.yml" "$stage/usr/share/meshgate/prometheus/meshgate-rules.yml"
install -D -m 0644 "$root/deploy/grafana/meshgate.json" "$stage/usr/share/meshgate/grafana/meshgate.json"
# Completions and man pages, generated from the binary's own CLI
# definition (so they never drift from it).
"$bin" completions bash | install -D -m 0644 /dev/stdin "$stage/usr/share/bash-completion/completions/meshgate"
"$bin" completions zsh | install -D -m 0644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_meshgate"
"$bin" completions fish | install -D -m 0644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/meshgate.fish"
"$bin" manpages --dir "$stage/usr/share/man/man1" >/dev/null
chmod 0644 "$stage"/usr/share/man/man1/*.1
gzip -9n "$stage"/usr/share/man/man1/*.1
install -d -m 0755 "$stage/DEBIAN"
size="$(du -sk "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: meshgate
Version: $version
Architecture: $arch
Maintainer: meshgate maintainers <meshgate@example.org>
Installed-Size: $size
Depends: libc6, iproute2
Section: net
Priority: optional
Homepage: https://example.org/meshgate
Description: multi-region VPN appliance: ESP over TUN, mesh signalling, WebAssembly policies
 One meshgate process runs on each appliance: an ESP gateway (RFC 4303/4106/3948)
 over a TUN device, a QUIC signalling channel with SWIM membership and
 negotiated keys, and WebAssembly policies deciding routes and failover.
CONTROL
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd meshgate >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/meshgate --no-create-home \
      --shell /usr/sbin/nologin meshgate
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
POSTINST
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop meshgate.service >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm"
echo /etc/meshgate/meshgate.toml.example > "$stage/DEBIAN/conffiles"
mkdir -p "$out"
deb="$out/meshgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
