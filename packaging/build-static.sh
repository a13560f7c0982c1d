#!/bin/sh
# Builds a fully static assistd for one architecture and copies it to a fixed path that
# install.sh and `make deb` pick up:
#
#   packaging/build-static.sh [x86_64|aarch64]
#     x86_64  -> target/static/assistd           (+ target/static/assistd.flavour)
#     aarch64 -> target/static/aarch64/assistd   (+ .../assistd.flavour)
#
# Flavours, best first:
#   musl         the <arch>-unknown-linux-musl Rust target is installed. Crates with C code
#                (ring, for TLS) are compiled with musl-gcc (Debian: musl-tools) on x86_64,
#                with aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu) on aarch64.
#   glibc-static only on x86_64 (the host): +crt-static against glibc's libc.a. A fallback
#                with a sharp edge: users and groups in /etc/passwd and /etc/group resolve,
#                but when nsswitch.conf names another source (Debian 12: "files systemd")
#                a lookup that misses /etc/passwd makes glibc dlopen that NSS module into
#                the static binary, which crashes it (SIGSEGV, seen on Debian 12 with a task
#                for an unknown user). LDAP/sssd users never resolve. See README "Install".
# aarch64 without the musl target or a cross linker is skipped with a message (exit 0), so
# `make static-aarch64` never fails on a machine that cannot do it.
#
# Size, x86_64 musl only (README "The static binary"; the figures in "Measured figures"):
#   - std compiled from the toolchain's own source (the rust-src component, the same version
#     as the compiler) with the release profile, its `optimize_for_size` feature and without
#     the backtrace symbolizer, which a stripped binary cannot use anyway. This is cargo's
#     `-Zbuild-std`, unstable, so the build runs with RUSTC_BOOTSTRAP=1. STATIC_STD=auto (the
#     default: from source when rust-src is installed, else the prebuilt std, and the prebuilt
#     std again if the source build fails), source (must work), prebuilt (never).
#     With std from source, every crate is also compiled with -Zpanic-in-drop=abort when
#     the compiler has it: a panic escaping a destructor aborts (as Rust's RFC 3288 proposes
#     for the language), so drops need no landing pads of their own; every other panic
#     still unwinds to the invocation's guard. It is only sound when std is compiled with
#     it too, hence only here (README "Release profile").
#   - linked by rust-lld (shipped with rustc) with identical-code folding (--icf=all) and
#     packed relative relocations (--pack-dyn-relocs=relr, applied by musl's static-pie
#     start code). Without rust-lld, the system linker.
#   - hot functions first (STATIC_ORDER=auto, the default, when valgrind and rust-lld are
#     installed; on: must work; off: never): a first build with symbols runs the agent's
#     scenarios under callgrind (packaging/train-order.sh), and the shipped binary is linked
#     with the functions it ran at the front of .text. Same code and size; the idle agent's
#     resident text shrinks to what it runs (README "The static binary"). The first build
#     lives in target/order-train/; training runs again only when that build or
#     train-order.sh changed.
#   aarch64 and the glibc fallback use the prebuilt std, the system linker, the default layout.
# Every flavour's Rust code keeps its frame pointers (-C force-frame-pointers=yes): each
# function's unwind table entry, which stays, then says "the frame is at rbp" once instead
# of following every push and pop, 82 KB less of .eh_frame on x86_64 musl for 0.5 KB more
# of .text, and profilers and debuggers can walk the stack by the frame chain alone
# (README "The static binary").
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (cargo's own), STATIC_DIR (default
# target/static, relative to the repository), STATIC_FLAVOUR=auto|musl|glibc (x86_64 only;
# default auto: musl when installed, else glibc), STATIC_LOCAL_ONLY=1 for the local-only
# build (`--no-default-features`: no server protocol, no TLS; default STATIC_DIR then
# target/static-local; `make static-local`).
set -eu

arch=${1:-x86_64}
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
features=
how=
if [ "${STATIC_LOCAL_ONLY:-}" = 1 ]; then
    features=--no-default-features
    STATIC_DIR=${STATIC_DIR:-target/static-local}
fi
STATIC_DIR=${STATIC_DIR:-target/static}
cargo_out=${CARGO_TARGET_DIR:-target}
# Frame pointers in every flavour's Rust code (above).
frame_flags="-C force-frame-pointers=yes"

say() { printf 'build-static: %s\n' "$*"; }
die() { printf 'build-static: error: %s\n' "$*" >&2; exit 1; }

# True when the Rust standard library for target $1 is installed (rustup or not).
has_rust_target() {
    if command -v rustup >/dev/null 2>&1; then
        rustup target list --installed 2>/dev/null | grep -qx "$1" && return 0
    fi
    [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]
}

# The build machine's paths, out of the binary: panic locations name a dependency's file by
# its path under cargo's registry (/root/.cargo/registry/src/index.crates.io-<hash>/...) and
# std's, with std from source, under the toolchain's rust-src. Remapped, a dependency's file
# is "crate-version/src/file.rs" and std's "/rustc/<commit>/library/...", what the prebuilt
# std says: the same binary from any home directory, and some 400 strings shorter. Sets
# $remap_flags, for every flavour's Rust code (C compilers do not see RUSTFLAGS; ring's C
# leaves no path in the binary: `strings` finds none).
set_remap_flags() {
    remap_flags=
    registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
    std_src=$(rustc --print sysroot)/lib/rustlib/src/rust
    commit=$(rustc -vV | sed -n 's/^commit-hash: //p')
    for dir in "$registry"/*/; do
        [ -d "$dir" ] || continue
        case $dir in
        *[[:space:]]*) say "not remapping $dir: RUSTFLAGS cannot hold a path with a space" ;;
        *) remap_flags="$remap_flags --remap-path-prefix=$dir=" ;;
        esac
    done
    case $std_src in
    *[[:space:]]*) say "not remapping $std_src: RUSTFLAGS cannot hold a path with a space" ;;
    *) if [ -n "$commit" ]; then
        remap_flags="$remap_flags --remap-path-prefix=$std_src=/rustc/$commit"
    fi ;;
    esac
}

# One cargo build of the x86_64 musl binary: musl_cargo TARGET_DIR STD EXTRA_RUSTFLAGS, STD
# being "source" (-Zbuild-std) or "prebuilt". $link_flags and $features apply to every build.
musl_cargo() {
    if [ "$2" = source ]; then
        RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$1" RUSTFLAGS="${RUSTFLAGS:-} $frame_flags $remap_flags $drop_flags $link_flags $3" \
            "$CARGO" build --release --locked --target "$target" $features \
            -Zbuild-std=std,panic_unwind -Zbuild-std-features=optimize_for_size
    else
        CARGO_TARGET_DIR="$1" RUSTFLAGS="${RUSTFLAGS:-} $frame_flags $remap_flags $link_flags $3" \
            "$CARGO" build --release --locked --target "$target" $features
    fi
}

# The build of musl_cargo's STD, with the hot functions first when it can (STATIC_ORDER):
# a first build keeps its symbols, runs under callgrind (train-order.sh) and names the
# functions the agent runs; the shipped build is linked with them in front
# (--symbol-ordering-file). The two builds have the same code and symbol names: only link
# arguments differ, which do not enter rustc's symbol hashes. Training runs again only when
# the first build or the training script changed. Sets $order_how (" order=N", for $how);
# returns non-zero when the build failed.
ordered_build() {
    order_how=
    if [ "$order" != off ]; then
        variant=full
        [ -n "$features" ] && variant=local
        train_dir=$cargo_out/order-train/$variant
        order_file=$train_dir/assistd.order
        trained=$train_dir/$target/release/assistd
        say "first build, with symbols, to train the function order"
        CARGO_PROFILE_RELEASE_STRIP=false musl_cargo "$train_dir" "$1" "" || return 1
        if [ ! -s "$order_file" ] || [ "$trained" -nt "$order_file" ] ||
            [ packaging/train-order.sh -nt "$order_file" ]; then
            driver=
            if [ -z "$features" ]; then
                say "building the remote scenario's driver (examples/bench-remote, for the host)"
                if "$CARGO" build --release --locked --example bench-remote; then
                    driver=$cargo_out/release/examples/bench-remote
                else
                    say "could not build bench-remote: training local mode only"
                fi
            fi
            rm -f "$order_file"
            if packaging/train-order.sh "$trained" "$order_file.new" ${driver:+"$driver"}; then
                mv -f "$order_file.new" "$order_file"
                # The order's content is not in cargo's fingerprint: make it link again.
                rm -f "$cargo_out/$target/release/deps/assistd-"*
            else
                [ "$order" = on ] && die "STATIC_ORDER=on but the training failed (above)"
                say "no function order (the training failed, above): the default layout"
            fi
        fi
        if [ -s "$order_file" ]; then
            # strip=false as in the first build, so the two differ in link arguments only
            # (above: those keep the symbol names); the linker strips the shipped binary.
            hot=$(wc -l <"$order_file" | tr -d ' ')
            say "linking with $hot hot functions first ($order_file)"
            order_how=" order=$hot"
            CARGO_PROFILE_RELEASE_STRIP=false musl_cargo "$cargo_out" "$1" \
                "-C link-arg=-Wl,--symbol-ordering-file=$order_file -C link-arg=-Wl,--no-warn-symbol-ordering -C link-arg=-Wl,--strip-all" ||
                return 1
            return 0
        fi
    fi
    musl_cargo "$cargo_out" "$1" ""
}

# The x86_64 musl build with the size and layout options above; sets $how for the flavour file.
build_musl_x86_64() {
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    gcc_ld=$sysroot/lib/rustlib/$host/bin/gcc-ld
    link_flags=
    how=link=system
    order=${STATIC_ORDER:-auto}
    case $order in
    auto | on | off) ;;
    *) die "STATIC_ORDER must be auto, on or off" ;;
    esac
    if [ -x "$gcc_ld/ld.lld" ]; then
        link_flags="-C link-arg=-B$gcc_ld -C link-arg=-fuse-ld=lld"
        link_flags="$link_flags -C link-arg=-Wl,--icf=all -C link-arg=-Wl,--pack-dyn-relocs=relr"
        how=link=rust-lld
    else
        say "rust-lld not found in $gcc_ld: linking with the system linker (a larger binary)"
        [ "$order" = on ] && die "STATIC_ORDER=on needs rust-lld (--symbol-ordering-file)"
        order=off
    fi
    if [ "$order" != off ] && ! command -v valgrind >/dev/null 2>&1; then
        [ "$order" = on ] && die "STATIC_ORDER=on but valgrind is not installed (apt-get install valgrind)"
        say "valgrind is not installed (apt-get install valgrind): no function order, the default layout (a larger idle RSS)"
        order=off
    fi
    std=${STATIC_STD:-auto}
    case $std in
    auto | source | prebuilt) ;;
    *) die "STATIC_STD must be auto, source or prebuilt" ;;
    esac
    if [ "$std" != prebuilt ] && [ ! -f "$sysroot/lib/rustlib/src/rust/library/std/Cargo.toml" ]; then
        [ "$std" = source ] && die "STATIC_STD=source but rust-src is not installed (rustup component add rust-src)"
        say "rust-src is not installed (rustup component add rust-src): the prebuilt std (a larger binary)"
        std=prebuilt
    fi
    if [ "$std" != prebuilt ]; then
        # Probed, not assumed: an unstable option may leave a later compiler, and then the
        # build goes on without it rather than fall back to the prebuilt std.
        drop_flags=
        drop_how=
        if RUSTC_BOOTSTRAP=1 rustc -Zpanic-in-drop=abort --print sysroot >/dev/null 2>&1; then
            drop_flags=-Zpanic-in-drop=abort
            drop_how=" panic-in-drop=abort"
        else
            say "this rustc has no -Zpanic-in-drop: destructors keep their landing pads (a larger binary)"
        fi
        say "std from source (-Zbuild-std, RUSTC_BOOTSTRAP=1$drop_how), $how"
        if ordered_build source; then
            how="std=source$drop_how $how$order_how"
            return 0
        fi
        [ "$std" = source ] && die "the build with std from source failed (above)"
        say "the build with std from source failed (above): building with the prebuilt std"
    fi
    say "prebuilt std, $how"
    ordered_build prebuilt || die "the build failed (above)"
    how="std=prebuilt $how$order_how"
}

set_remap_flags
want=${STATIC_FLAVOUR:-auto}
case $want in auto | musl | glibc) ;; *) die "STATIC_FLAVOUR must be auto, musl or glibc" ;; esac

case $arch in
x86_64)
    out_dir=$STATIC_DIR
    if [ "$want" = musl ] && ! has_rust_target x86_64-unknown-linux-musl; then
        die "STATIC_FLAVOUR=musl but the x86_64-unknown-linux-musl target is not installed (rustup target add x86_64-unknown-linux-musl)"
    fi
    if [ "$want" != glibc ] && has_rust_target x86_64-unknown-linux-musl; then
        flavour=musl
        target=x86_64-unknown-linux-musl
        # Rust's musl target links with its own bundled musl; only C code compiled by build
        # scripts (ring) needs a musl-targeting C compiler.
        if [ -z "${CC_x86_64_unknown_linux_musl:-}" ]; then
            if command -v musl-gcc >/dev/null 2>&1; then
                CC_x86_64_unknown_linux_musl=musl-gcc
                export CC_x86_64_unknown_linux_musl
            else
                say "musl-gcc not found (apt-get install musl-tools): crates with C code will not build"
            fi
        fi
        say "flavour musl ($target)"
        build_musl_x86_64
    else
        flavour=glibc-static
        target=x86_64-unknown-linux-gnu
        if [ "$want" = auto ]; then
            say "the x86_64-unknown-linux-musl target is not installed"
            say "  (rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools)"
        fi
        say "flavour glibc-static ($target, +crt-static)"
        # With --target, RUSTFLAGS reach only the target crates, not build scripts or proc
        # macros, which must stay dynamic.
        RUSTFLAGS="${RUSTFLAGS:-} $frame_flags $remap_flags -C target-feature=+crt-static" \
            "$CARGO" build --release --locked --target "$target" $features
        say "WARNING: static glibc: only users in /etc/passwd resolve, and on hosts whose"
        say "  nsswitch.conf lists more than 'files' for passwd/group, a task for an unknown"
        say "  user crashes the agent (glibc loads an NSS module into a static binary). Prefer musl."
    fi
    ;;
aarch64)
    out_dir=$STATIC_DIR/aarch64
    target=aarch64-unknown-linux-musl
    flavour=musl
    if ! has_rust_target "$target"; then
        say "skipping aarch64: the $target Rust target is not installed (rustup target add $target)"
        exit 0
    fi
    linker=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-}
    if [ -z "$linker" ]; then
        for cc in aarch64-linux-musl-gcc aarch64-linux-gnu-gcc; do
            if command -v "$cc" >/dev/null 2>&1; then linker=$cc; break; fi
        done
    fi
    if [ -z "$linker" ]; then
        say "skipping aarch64: no aarch64 C toolchain to link with (apt-get install gcc-aarch64-linux-gnu)"
        exit 0
    fi
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=$linker
    CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-$linker}
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER CC_aarch64_unknown_linux_musl
    say "flavour musl ($target, linked with $linker)"
    RUSTFLAGS="${RUSTFLAGS:-} $frame_flags $remap_flags" \
        "$CARGO" build --release --locked --target "$target" $features
    ;;
*)
    die "unknown architecture '$arch' (x86_64 or aarch64)"
    ;;
esac

built=$cargo_out/$target/release/assistd
[ -f "$built" ] || die "cargo did not produce $built"
mkdir -p "$out_dir"
# Copy to a temp name, then rename: a running `make install` never sees half a binary.
cp "$built" "$out_dir/assistd.tmp"
mv -f "$out_dir/assistd.tmp" "$out_dir/assistd"
printf '%s %s%s\n' "$flavour" "$target" "${how:+ $how}" >"$out_dir/assistd.flavour"

# Verify: no dynamic section, no interpreter. ldd prints "not a dynamic executable" for a
# classic static binary and "statically linked" for a static PIE; anything with "=>" is a
# shared library dependency.
if command -v file >/dev/null 2>&1; then
    say "file: $(file -b "$out_dir/assistd")"
fi
if [ "$arch" = x86_64 ]; then
    ldd_out=$(ldd "$out_dir/assistd" 2>&1 || true)
    say "ldd: $(printf '%s' "$ldd_out" | tr '\n' ' ' | sed 's/^[[:space:]]*//')"
    case $ldd_out in
    *"=>"* | *ld-linux*) die "$out_dir/assistd is dynamically linked" ;;
    esac
elif command -v readelf >/dev/null 2>&1; then
    if readelf -l "$out_dir/assistd" | grep -q INTERP; then
        die "$out_dir/assistd has a program interpreter (dynamically linked)"
    fi
    say "readelf: no program interpreter (static)"
fi
# The x86_64 binary runs here: a smoke test of what the size options built (an unapplied
# relocation or a broken std would crash before printing the version).
if [ "$arch" = x86_64 ]; then
    version=$("$out_dir/assistd" --version) || die "$out_dir/assistd --version failed"
    say "runs: $version"
fi
size=$(wc -c <"$out_dir/assistd" | tr -d ' ')
say "$out_dir/assistd: $size bytes ($flavour, $target${how:+, $how}${features:+, local-only})"
