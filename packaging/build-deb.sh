#!/bin/sh
# Builds target/deb/assistd_<version>_<arch>.deb with dpkg-deb from the static binary
# (`make static`) and the files in packaging/: the layout is install.sh's with --init
# systemd, so the package and `make install` put the same files in the same places.
#
#   packaging/build-deb.sh [--binary PATH]       (default target/static/assistd)
set -eu
cd "$(dirname "$0")/.."

binary=target/static/assistd
case ${1:-} in
--binary) binary=$2 ;;
--binary=*) binary=${1#*=} ;;
'') ;;
*) echo "build-deb: unknown option $1" >&2; exit 2 ;;
esac
[ -f "$binary" ] || { echo "build-deb: no binary at $binary: run 'make static' first" >&2; exit 2; }
command -v dpkg-deb >/dev/null 2>&1 || { echo "build-deb: dpkg-deb not found (apt-get install dpkg)" >&2; exit 2; }

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml" >&2; exit 2; }
# The package architecture is the binary's, not the build machine's.
case $(file -b "$binary" 2>/dev/null) in
*aarch64*) arch=arm64 ;;
*x86-64*) arch=amd64 ;;
*) arch=$(dpkg --print-architecture) ;;
esac

stage=target/deb/stage
rm -rf "$stage"
mkdir -p "$stage"
DESTDIR=$stage sh packaging/install.sh --binary "$binary" --init systemd >/dev/null
# dpkg keeps its own list of the package's files.
rm -rf "$stage/usr/share/assistd"
mkdir -p "$stage/usr/share/doc/assistd"
cp packaging/config.md "$stage/usr/share/doc/assistd/config.md"
cp packaging/logrotate/assistd "$stage/usr/share/doc/assistd/logrotate.example"

mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
    cp "packaging/debian/$script" "$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
done
# An edited /etc/assistd/config.json survives upgrades; dpkg asks before replacing it.
echo /etc/assistd/config.json >"$stage/DEBIAN/conffiles"
size_kb=$(du -sk "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: assistd
Version: $version
Architecture: $arch
Maintainer: assistd developers <dev@assistd>
Section: admin
Priority: optional
Installed-Size: $size_kb
Description: small synchronous host agent (Cloud Assistant protocol, local scheduler)
 Runs commands for a cloud control plane, or from a local task directory with results in
 a journal on disk. One static binary, no dependencies.
CONTROL

out=target/deb/assistd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$out" >/dev/null
dpkg-deb --contents "$out"
echo "build-deb: $out ($(wc -c <"$out" | tr -d ' ') bytes)"
