#!/bin/sh
# Installs (or removes) assistd: the binary, the default config, the state and log
# directories, and the service for one init system. POSIX sh; safe to run twice.
#
#   packaging/install.sh [--binary PATH] [--init systemd|openrc|sysv|busybox|runit|none]
#                        [--destdir DIR] [--start]
#   packaging/install.sh --uninstall [--purge] [--init ...] [--destdir DIR]
#
# Layout (under $DESTDIR):
#   /usr/bin/assistd                          0755  from target/static/assistd or --binary
#   /etc/assistd/config.json                  0644  never overwritten: an edited config stays
#                                                   and the new default goes to config.json.new
#   /etc/assistd/tasks/                       0700  local-mode task directory (root-only: task files may hold secrets, and the agent refuses files others can write)
#   /var/lib/assistd/                         0711  state (journal 0700, scripts 0711, lock 0600)
#   /var/log/assistd/                         0750  log files (inits without journald)
#   systemd  /usr/lib/systemd/system/assistd.service
#   openrc   /etc/init.d/assistd
#   sysv     /etc/init.d/assistd
#   busybox  /usr/share/assistd/inittab.example, and its line in /etc/inittab if that exists
#   runit    /etc/sv/assistd/run, /etc/sv/assistd/log/run
#   /usr/share/assistd/installed-files              what --uninstall removes
#
# With DESTDIR set (or --destdir), everything goes under that root and nothing else is
# touched: no systemctl, rc-update, update-rc.d or signal to init. The init is then detected
# from the root's files, and is systemd when the root has none.
# --uninstall stops and disables the service, removes the files listed in installed-files,
# and keeps config, state and logs unless --purge.
set -eu
umask 022

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

DESTDIR=${DESTDIR:-}
binary=
init=
action=install
purge=no
start=no

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --init) [ $# -ge 2 ] || die "--init needs a value"; init=$2; shift 2 ;;
    --init=*) init=${1#*=}; shift ;;
    --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; DESTDIR=$2; shift 2 ;;
    --destdir=*) DESTDIR=${1#*=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    --start) start=yes; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done

case $init in
'' | systemd | openrc | sysv | busybox | runit | none) ;;
*) die "unknown init '$init' (systemd, openrc, sysv, busybox, runit or none)" ;;
esac

if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    [ "$DESTDIR" != / ] || DESTDIR=
fi
root=$DESTDIR
# True when installing into the running system, the only case where services are touched.
live() { [ -z "$DESTDIR" ]; }

manifest=$root/usr/share/assistd/installed-files
unit_path=/usr/lib/systemd/system/assistd.service
inittab_begin='# assistd: begin (managed by assistd install.sh)'
inittab_end='# assistd: end'

detect_init() {
    if live; then
        if [ -d /run/systemd/system ]; then echo systemd; return; fi
        if command -v openrc-run >/dev/null 2>&1 || [ -x /sbin/openrc-run ]; then echo openrc; return; fi
        if [ -d /etc/runit ] || [ -d /etc/sv ] && command -v runsv >/dev/null 2>&1; then echo runit; return; fi
        if [ -L /sbin/init ] && case $(readlink /sbin/init) in *busybox*) true ;; *) false ;; esac; then
            echo busybox; return
        fi
        if [ -d /etc/init.d ]; then echo sysv; return; fi
        echo none
    else
        for f in /lib/systemd/systemd /usr/lib/systemd/systemd; do
            if [ -e "$root$f" ]; then echo systemd; return; fi
        done
        if [ -e "$root/sbin/openrc-run" ] || [ -e "$root/usr/sbin/openrc-run" ]; then echo openrc; return; fi
        if [ -d "$root/etc/sv" ] && [ -d "$root/etc/runit" ]; then echo runit; return; fi
        if [ -f "$root/etc/inittab" ] && [ -L "$root/sbin/init" ]; then echo busybox; return; fi
        if [ -d "$root/etc/init.d" ]; then echo sysv; return; fi
        echo systemd
    fi
}

# missing_dirs DIR: the directories `mkdir -p DIR` would create under the root, top first.
missing_dirs() {
    md_dir=$1 md_list=
    while [ "$md_dir" != / ] && [ ! -d "$root$md_dir" ]; do
        md_list="$md_dir $md_list"
        md_dir=$(dirname "$md_dir")
    done
    echo "$md_list"
}

# mkdirs DIR: `mkdir -p` under the root, recording each directory it creates (as "DIR/"),
# so that --uninstall leaves a DESTDIR tree as it found it.
mkdirs() {
    for md_new in $(missing_dirs "$1"); do
        mkdir "$root$md_new"
        record "$md_new/"
    done
}

# The manifest lives in /usr/share/assistd; it records its own directories first.
start_manifest() {
    sm_missing=$(missing_dirs "$(dirname "${manifest#"$root"}")")
    mkdir -p "$(dirname "$manifest")"
    [ -f "$manifest" ] || : >"$manifest"
    for sm_dir in $sm_missing; do record "$sm_dir/"; done
}

record() {
    grep -qxF "$1" "$manifest" || printf '%s\n' "$1" >>"$manifest"
}

# put SRC DEST MODE: install one file atomically; an identical file is left alone, so a
# second run changes nothing (not even mtimes). Records DEST in the manifest.
put() {
    src=$1 dest=$2 mode=$3
    mkdirs "$(dirname "$dest")"
    if [ -f "$root$dest" ] && cmp -s "$src" "$root$dest"; then
        chmod "$mode" "$root$dest"
        say "unchanged $dest"
    else
        cp "$src" "$root$dest.tmp.$$"
        chmod "$mode" "$root$dest.tmp.$$"
        mv -f "$root$dest.tmp.$$" "$root$dest"
        say "installed $dest"
    fi
    record "$dest"
}

# mkdir_mode DIR MODE: create (or fix the mode of) a directory that --uninstall keeps
# (config, state, logs); only the parents it had to create are recorded.
mkdir_mode() {
    mkdirs "$(dirname "$1")"
    mkdir -p "$root$1"
    chmod "$2" "$root$1"
}

install_config() {
    src=$here/config.example.json
    dest=$root/etc/assistd/config.json
    mkdir_mode /etc/assistd 0755
    if [ ! -e "$dest" ]; then
        cp "$src" "$dest.tmp.$$"
        chmod 0644 "$dest.tmp.$$"
        mv -f "$dest.tmp.$$" "$dest"
        say "installed /etc/assistd/config.json"
    elif cmp -s "$src" "$dest"; then
        say "unchanged /etc/assistd/config.json"
        rm -f "$dest.new"
    else
        cp "$src" "$dest.new"
        chmod 0644 "$dest.new"
        say "kept your /etc/assistd/config.json; the new default is /etc/assistd/config.json.new"
    fi
    mkdir_mode /etc/assistd/tasks 0700
}

inittab_line() {
    grep -v '^#' "$here/busybox/inittab.example" | grep assistd | head -n 1
}

install_service() {
    case $1 in
    systemd)
        put "$here/assistd.service" "$unit_path" 0644
        if live; then
            systemctl daemon-reload
            systemctl enable assistd.service
            if [ $start = yes ]; then systemctl restart assistd.service; fi
        fi
        ;;
    openrc)
        put "$here/openrc/assistd" /etc/init.d/assistd 0755
        if live; then
            rc-update add assistd default
            if [ $start = yes ]; then rc-service assistd restart; fi
        fi
        ;;
    sysv)
        put "$here/sysv/assistd" /etc/init.d/assistd 0755
        if live; then
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d assistd defaults
            elif command -v chkconfig >/dev/null 2>&1; then
                chkconfig --add assistd
            else
                say "no update-rc.d or chkconfig: link /etc/init.d/assistd into your runlevels"
            fi
            if [ $start = yes ]; then /etc/init.d/assistd restart; fi
        fi
        ;;
    busybox)
        put "$here/busybox/inittab.example" /usr/share/assistd/inittab.example 0644
        tab=$root/etc/inittab
        if [ -f "$tab" ]; then
            if grep -qxF "$inittab_begin" "$tab"; then
                say "unchanged /etc/inittab"
            else
                printf '%s\n%s\n%s\n' "$inittab_begin" "$(inittab_line)" "$inittab_end" >>"$tab"
                say "added assistd to /etc/inittab"
                # busybox init re-reads inittab on SIGHUP and starts new respawn entries.
                if live; then kill -HUP 1; fi
            fi
        else
            say "no /etc/inittab: add this line to your inittab: $(inittab_line)"
        fi
        ;;
    runit)
        put "$here/runit/assistd/run" /etc/sv/assistd/run 0755
        put "$here/runit/assistd/log/run" /etc/sv/assistd/log/run 0755
        if live; then
            for svdir in /etc/service /var/service /service; do
                if [ -d "$svdir" ]; then
                    [ -e "$svdir/assistd" ] || ln -s /etc/sv/assistd "$svdir/assistd"
                    say "enabled in $svdir"
                    break
                fi
            done
        fi
        ;;
    none)
        say "no service installed; run: assistd agent --config /etc/assistd/config.json"
        ;;
    esac
}

uninstall_service() {
    case $1 in
    systemd)
        if live && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now assistd.service || true
        fi
        ;;
    openrc)
        if live; then
            rc-service assistd stop || true
            rc-update del assistd default || true
        fi
        ;;
    sysv)
        if live && [ -x /etc/init.d/assistd ]; then
            /etc/init.d/assistd stop || true
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d -f assistd remove || true
            elif command -v chkconfig >/dev/null 2>&1; then
                chkconfig --del assistd || true
            fi
        fi
        ;;
    busybox)
        tab=$root/etc/inittab
        if [ -f "$tab" ] && grep -qxF "$inittab_begin" "$tab"; then
            # Drop our marked block, keep every other line byte for byte.
            awk -v b="$inittab_begin" -v e="$inittab_end" \
                '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' \
                "$tab" >"$tab.tmp.$$"
            cat "$tab.tmp.$$" >"$tab"
            rm -f "$tab.tmp.$$"
            say "removed assistd from /etc/inittab"
            # init stops respawning it once the line is gone and it is told to re-read.
            if live; then kill -HUP 1; fi
        fi
        ;;
    runit)
        if live; then
            for svdir in /etc/service /var/service /service; do
                if [ -L "$svdir/assistd" ]; then
                    rm -f "$svdir/assistd"
                    say "disabled in $svdir"
                fi
            done
        fi
        ;;
    esac
}

do_install() {
    if [ -z "$binary" ]; then
        binary=$repo/target/static/assistd
        [ -f "$binary" ] || die "no binary at $binary: run 'make static' first, or pass --binary PATH"
    fi
    [ -f "$binary" ] || die "--binary $binary: no such file"
    [ -n "$init" ] || { init=$(detect_init); say "init: $init (detected; --init to choose)"; }

    start_manifest
    put "$binary" /usr/bin/assistd 0755
    install_config
    mkdir_mode /var/lib/assistd 0711
    mkdir_mode /var/log/assistd 0750
    install_service "$init"
    say "done${DESTDIR:+ (under $DESTDIR)}"
}

# The inits install.sh set up, read back from the manifest.
installed_inits() {
    [ -f "$manifest" ] || return 0
    while IFS= read -r path; do
        case $path in
        "$unit_path") echo systemd ;;
        /etc/init.d/assistd)
            if head -n 1 "$root$path" 2>/dev/null | grep -q openrc-run; then echo openrc; else echo sysv; fi
            ;;
        /etc/sv/assistd/run) echo runit ;;
        /usr/share/assistd/inittab.example) echo busybox ;;
        esac
    done <"$manifest"
}

do_uninstall() {
    if [ -z "$init" ]; then
        # The inits whose files the manifest lists; the others were never set up.
        for candidate in $(installed_inits); do
            uninstall_service "$candidate"
        done
    else
        uninstall_service "$init"
    fi
    files= dirs=
    # Directories created for config, state and logs that an earlier --uninstall without
    # --purge had to leave behind (they were not empty).
    leftover=$root/var/lib/assistd/installed-dirs
    if [ -f "$manifest" ] || [ -f "$leftover" ]; then
        files=$(cat "$manifest" 2>/dev/null | grep -v '/$' || true)
        dirs=$(cat "$manifest" "$leftover" 2>/dev/null | grep '/$' | sort -r -u || true)
        for path in $files; do
            case $path in /*) ;; *) continue ;; esac
            if [ -e "$root$path" ] || [ -L "$root$path" ]; then
                rm -f "$root$path"
                say "removed $path"
            fi
        done
        rm -f "$manifest"
    else
        say "no /usr/share/assistd/installed-files: no files to remove"
    fi
    if [ $purge = yes ]; then
        for dir in /etc/assistd /var/lib/assistd /var/log/assistd; do
            if [ -e "$root$dir" ]; then
                rm -rf "$root$dir"
                say "purged $dir"
            fi
        done
    else
        say "kept /etc/assistd, /var/lib/assistd and /var/log/assistd (--purge removes them)"
    fi
    # Directories install.sh created, deepest first; one still in use is not empty and stays,
    # and is remembered in the state dir for a later --purge.
    remaining=
    for dir in $dirs; do
        case $dir in /?*) ;; *) continue ;; esac
        rmdir "$root${dir%/}" 2>/dev/null || true
        if [ -d "$root${dir%/}" ]; then remaining="$remaining$dir
"; fi
    done
    if [ -n "$remaining" ] && [ -d "$root/var/lib/assistd" ]; then
        printf '%s' "$remaining" >"$leftover"
    fi
    if live && [ "$init" != none ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    say "uninstalled${DESTDIR:+ (under $DESTDIR)}"
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
esac
