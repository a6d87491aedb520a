#!/bin/sh
# Installs blufio from its release tarball (`cargo xtask dist`) into the standard places:
#
#   /usr/bin/blufiod, /usr/bin/blufioctl
#   /usr/lib/systemd/system/blufiod.service, /usr/lib/sysusers.d/blufio.conf,
#   /usr/lib/tmpfiles.d/blufio.conf, /etc/logrotate.d/blufiod
#   /usr/share/man/man1/blufioctl*.1, /usr/share/man/man8/blufiod.8
#   bash, zsh and fish completions, /usr/share/doc/blufio/, /usr/share/blufio/ (hook examples,
#   Prometheus alert rules, Grafana dashboard)
#
# then creates the blufio user and directories and reloads systemd. Run it again to upgrade: it
# replaces what it installed and restarts a running blufiod. /etc/blufio/blufiod.toml and
# /var/lib/blufio are never touched.
#
#   sudo ./install.sh              install (or upgrade)
#   sudo ./install.sh --now        ... and enable and start blufiod
#   sudo ./install.sh --uninstall  stop blufiod and remove what was installed; the state
#                                  directory /var/lib/blufio and /etc/blufio stay
#   ./install.sh --root DIR        install into DIR instead of / (for packaging; no systemctl)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
action=install
now=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --now) now=1; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$root" in
    /*) ;;
    *) echo "install.sh: --root must be an absolute path" >&2; exit 2 ;;
esac
root=${root%/}
manifest=/usr/share/blufio/installed-files

# The manifest's lines that are paths this script installs: absolute, under /usr or
# /etc/logrotate.d, without `..`. Anything else in it is ignored, never removed.
safe_paths() {
    grep -E '^/(usr|etc/logrotate\.d)/[A-Za-z0-9_./+-]+$' | grep -v -e '/\.\./' -e '/\.\.$' || true
}

# Runs systemd's tools only on the live system, where systemd runs.
live_systemd() {
    [ -z "$root" ] && [ -d /run/systemd/system ]
}

# The files: source in the tarball, mode, destination.
files() {
    cat <<EOF
bin/blufiod 0755 /usr/bin/blufiod
bin/blufioctl 0755 /usr/bin/blufioctl
packaging/blufiod.service 0644 /usr/lib/systemd/system/blufiod.service
packaging/blufiod.socket 0644 /usr/share/blufio/systemd/blufiod.socket
packaging/blufio.sysusers 0644 /usr/lib/sysusers.d/blufio.conf
packaging/blufio.tmpfiles 0644 /usr/lib/tmpfiles.d/blufio.conf
packaging/logrotate/blufiod 0644 /etc/logrotate.d/blufiod
completions/blufioctl.bash 0644 /usr/share/bash-completion/completions/blufioctl
completions/_blufioctl 0644 /usr/share/zsh/vendor-completions/_blufioctl
completions/blufioctl.fish 0644 /usr/share/fish/vendor_completions.d/blufioctl.fish
man/man8/blufiod.8 0644 /usr/share/man/man8/blufiod.8
packaging/blufiod.example.toml 0644 /usr/share/doc/blufio/blufiod.example.toml
README.md 0644 /usr/share/doc/blufio/README.md
packaging/hooks/budget-webhook 0755 /usr/share/blufio/hooks/budget-webhook
packaging/hooks/backup-offsite 0755 /usr/share/blufio/hooks/backup-offsite
packaging/prometheus/alerts.yml 0644 /usr/share/blufio/prometheus/alerts.yml
packaging/grafana/blufio.json 0644 /usr/share/blufio/grafana/blufio.json
EOF
    for page in "$here"/man/man1/*.1; do
        name=$(basename "$page")
        echo "man/man1/$name 0644 /usr/share/man/man1/$name"
    done
}

install_files() {
    [ -x "$here/bin/blufiod" ] || { echo "install.sh: $here/bin/blufiod is missing; run it from the unpacked release tarball" >&2; exit 1; }
    was_active=0
    if live_systemd && systemctl is-active --quiet blufiod.service; then
        was_active=1
    fi
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    list=$scratch/installed
    files | while read -r source mode destination; do
        # Replace atomically: a running blufiod keeps its old binary until it restarts.
        install -D -m "$mode" "$here/$source" "$root$destination.blufio-new"
        mv -fT "$root$destination.blufio-new" "$root$destination"
        echo "$destination" >> "$list"
    done
    # Files an earlier version installed that this one does not: removed.
    if [ -f "$root$manifest" ]; then
        sort "$list" > "$scratch/sorted"
        safe_paths < "$root$manifest" | sort | comm -23 - "$scratch/sorted" | while read -r stale; do
            rm -f "$root$stale"
        done
    fi
    echo "$manifest" >> "$list"
    install -D -m 0644 "$list" "$root$manifest"
    if live_systemd; then
        systemd-sysusers /usr/lib/sysusers.d/blufio.conf
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/blufio.conf
        systemctl daemon-reload
        if [ "$now" = 1 ]; then
            systemctl enable --now blufiod.service
        elif [ "$was_active" = 1 ]; then
            systemctl restart blufiod.service
        fi
    fi
    echo "installed blufio into ${root:-/}; configure /etc/blufio/blufiod.toml (see /usr/share/doc/blufio/blufiod.example.toml), then: systemctl enable --now blufiod"
}

uninstall_files() {
    if live_systemd; then
        systemctl disable --now blufiod.service 2>/dev/null || true
    fi
    if [ ! -f "$root$manifest" ]; then
        echo "install.sh: $root$manifest is missing: nothing installed by install.sh here" >&2
        exit 1
    fi
    safe_paths < "$root$manifest" | while read -r installed; do
        rm -f "$root$installed"
    done
    for dir in /usr/share/blufio/hooks /usr/share/blufio/prometheus /usr/share/blufio/grafana /usr/share/blufio /usr/share/doc/blufio; do
        rmdir "$root$dir" 2>/dev/null || true
    done
    if live_systemd; then
        systemctl daemon-reload
    fi
    echo "removed blufio; kept /var/lib/blufio (the database, the vault's key, backups) and /etc/blufio"
}

case "$action" in
    install) install_files ;;
    uninstall) uninstall_files ;;
esac
