#!/bin/sh
# Build the DynamicFS operator tools (release) and install them.
#
#   scripts/install.sh          install into /usr/local, and symlink the sbin
#                               helpers into /sbin (where mount(8), mkfs(8) and
#                               fsck(8) look for mount.TYPE, mkfs.TYPE, fsck.TYPE)
#   scripts/install.sh PREFIX   install into PREFIX/bin and PREFIX/sbin only
#
# Installed as:  dfs-inspect, dfs        -> PREFIX/bin
#                mkfs.dfs, mount.dfs,
#                fsck.dfs                -> PREFIX/sbin
#                dfs-scrub@.service,
#                dfs-scrub@.timer        -> PREFIX/lib/systemd/system
#                                           (or DFS_SYSTEMD_DIR)
#                61-dfs.rules            -> /etc/udev/rules.d without PREFIX,
#                                           else PREFIX/lib/udev/rules.d
#                                           (or DFS_UDEV_DIR); udev is told
#                                           to reload when installing to /etc
# A tool whose binary the build did not produce (not written yet) is skipped.
# Idempotent: running it again replaces the files and the links. The /sbin
# link directory can be changed with DFS_SBIN_LINK_DIR (tests use it); a file
# there that is not a symlink is left alone, with a warning.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -gt 1 ]; then
    echo "usage: $0 [PREFIX]" >&2
    exit 2
fi
prefix=${1:-}
link_sbin=no
if [ -z "$prefix" ]; then
    prefix=/usr/local
    link_sbin=yes
fi
link_dir=${DFS_SBIN_LINK_DIR:-/sbin}
systemd_dir=${DFS_SYSTEMD_DIR:-$prefix/lib/systemd/system}

cargo build --release -p dfs-tools --manifest-path "$root/Cargo.toml"

target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || target_dir=${CARGO_TARGET_DIR:-$root/target}
release=$target_dir/release

install -d "$prefix/bin" "$prefix/sbin"

# built-name  installed-name  directory
while read -r built name dir; do
    src=$release/$built
    if [ ! -x "$src" ]; then
        continue
    fi
    install -m 0755 "$src" "$prefix/$dir/$name.tmp"
    mv -f "$prefix/$dir/$name.tmp" "$prefix/$dir/$name"
    echo "installed $prefix/$dir/$name"
    if [ "$dir" = sbin ] && [ "$link_sbin" = yes ]; then
        link=$link_dir/$name
        if [ -e "$link" ] && [ ! -L "$link" ]; then
            echo "warning: $link exists and is not a symlink; left alone" >&2
        else
            ln -sfn "$prefix/sbin/$name" "$link"
            echo "linked $link -> $prefix/sbin/$name"
        fi
    fi
done <<EOF
dfs-inspect dfs-inspect bin
dfs dfs bin
mkfs-dfs mkfs.dfs sbin
mount-dfs mount.dfs sbin
fsck-dfs fsck.dfs sbin
EOF

# The udev rule that gives a pool UUID its /dev/disk/by-uuid link, so that
# `mount UUID=...` and fstab lines resolve (scripts/udev/61-dfs.rules).
udev_dir=${DFS_UDEV_DIR:-}
if [ -z "$udev_dir" ]; then
    if [ "$link_sbin" = yes ]; then udev_dir=/etc/udev/rules.d; else udev_dir=$prefix/lib/udev/rules.d; fi
fi
install -d "$udev_dir"
sed "s|@BINDIR@|$prefix/bin|g" "$root/scripts/udev/61-dfs.rules" >"$udev_dir/61-dfs.rules.tmp"
chmod 0644 "$udev_dir/61-dfs.rules.tmp"
mv -f "$udev_dir/61-dfs.rules.tmp" "$udev_dir/61-dfs.rules"
echo "installed $udev_dir/61-dfs.rules"
if [ "$link_sbin" = yes ] && command -v udevadm >/dev/null 2>&1; then
    udevadm control --reload 2>/dev/null && udevadm trigger --subsystem-match=block --action=change 2>/dev/null &&
        echo "udev rules reloaded" || true
fi

# systemd units for hosts that prefer a timer to the mount's own schedule.
install -d "$systemd_dir"
for unit in dfs-scrub@.service dfs-scrub@.timer; do
    sed "s|@BINDIR@|$prefix/bin|g" "$root/scripts/systemd/$unit" >"$systemd_dir/$unit.tmp"
    chmod 0644 "$systemd_dir/$unit.tmp"
    mv -f "$systemd_dir/$unit.tmp" "$systemd_dir/$unit"
    echo "installed $systemd_dir/$unit"
done
