#!/bin/sh
# Builds target/deb/assistd_<version>_<arch>.deb with dpkg-deb from the static binary
# (`make static`) and the files in packaging/: the layout is install.sh's with --init
# systemd, so the package and `make install` put the same files in the same places.
#
#   packaging/build-deb.sh [--binary PATH] [--out DIR]
#       PATH: default target/static/assistd; DIR: where the .deb (and its staging tree) go,
#       default target/deb. Relative paths are taken from the repository root.
#
# The package carries /usr/share/doc/assistd/copyright (Apache-2.0, Cargo.toml's license)
# and changelog.gz (one entry for this version, dated by the last commit), DEBIAN/md5sums
# (every file but the conffile, as dh_md5sums writes it), and a Maintainer field whose
# address is a placeholder: set DEB_MAINTAINER="Name <address>" for a real one.
set -eu
cd "$(dirname "$0")/.."

binary=target/static/assistd
out_dir=target/deb
while [ $# -gt 0 ]; do
    case $1 in
    --binary) binary=$2; shift ;;
    --binary=*) binary=${1#*=} ;;
    --out) out_dir=$2; shift ;;
    --out=*) out_dir=${1#*=} ;;
    *) echo "build-deb: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
# The placeholder: example.org is reserved (RFC 2606), so nothing is ever mailed there.
maintainer=${DEB_MAINTAINER:-assistd maintainers <assistd-maintainers@example.org>}
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

stage=$out_dir/stage
rm -rf "$stage"
mkdir -p "$stage"
DESTDIR=$stage sh packaging/install.sh --binary "$binary" --init systemd >/dev/null
# dpkg keeps its own list of the package's files.
rm -rf "$stage/usr/share/assistd"
mkdir -p "$stage/usr/share/doc/assistd"
cp packaging/config.md "$stage/usr/share/doc/assistd/config.md"
cp packaging/logrotate/assistd "$stage/usr/share/doc/assistd/logrotate.example"
cat >"$stage/usr/share/doc/assistd/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: assistd
Comment: Built from the assistd source tree with packaging/build-deb.sh. The static
 binary also contains the Rust crates listed in the source's Cargo.lock, each under
 its own license (see each crate's metadata).

Files: *
Copyright: the assistd developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
# The commit date keeps the package reproducible; outside a git checkout, now.
changed=$(git log -1 --format=%cD 2>/dev/null || true)
[ -n "$changed" ] || changed=$(date -R)
printf 'assistd (%s) unstable; urgency=medium\n\n  * Built from the assistd source tree (see README.md).\n\n -- %s  %s\n' \
    "$version" "$maintainer" "$changed" | gzip -9n >"$stage/usr/share/doc/assistd/changelog.gz"

mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
    cp "packaging/debian/$script" "$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
done
# An edited /etc/assistd/config.json survives upgrades; dpkg asks before replacing it.
echo /etc/assistd/config.json >"$stage/DEBIAN/conffiles"
# md5sums: paths relative to the root, without the conffile (dpkg tracks that one itself).
(cd "$stage" && find . -type f ! -path './DEBIAN/*' ! -path './etc/assistd/config.json' |
    sed 's|^\./||' | LC_ALL=C sort | while IFS= read -r f; do md5sum "$f"; done) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles"
size_kb=$(du -sk "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: assistd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: admin
Priority: optional
Installed-Size: $size_kb
Description: small synchronous host agent (Cloud Assistant protocol, local scheduler)
 Runs commands for a cloud control plane, or from a local task directory with results in
 a journal on disk. One static binary, no dependencies.
CONTROL

out=$out_dir/assistd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$out" >/dev/null
dpkg-deb --contents "$out"
echo "build-deb: $out ($(wc -c <"$out" | tr -d ' ') bytes)"
