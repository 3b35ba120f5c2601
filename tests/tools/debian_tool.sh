#!/usr/bin/env bash
# Unpack a Debian package's files into a project-local folder, without installing it:
#   tests/tools/debian_tool.sh PACKAGE DEST [EXTRA_PACKAGE...]
# EXTRA_PACKAGEs (e.g. the shared libraries that PACKAGE's binary needs and a fresh machine lacks)
# are unpacked into the same DEST, so DEST/usr/lib/... holds them for LD_LIBRARY_PATH.
# The package index is downloaded into DEST/../apt (not /var/lib/apt), the .deb is unpacked with
# dpkg-deb -x into DEST; dpkg's database, /etc and systemd are never touched, nothing is started.
# Where apt-get is absent, nothing is done (exit 3) and the caller says what else works.
set -euo pipefail
package=$1
dest=$2
shift 2
extras=("$@")
[ -d "$dest/usr/bin" ] && exit 0
command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || exit 3
mkdir -p "$(dirname "$dest")"
state="$(cd "$(dirname "$dest")" && pwd)/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
apt=(apt-get -qq -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
     -o "APT::Sandbox::User=$(id -un)" -o Debug::NoLocking=1)
echo "fetching Debian's $package${extras[*]:+ ${extras[*]}} into $dest (unpacked only: not installed, no service started)"
[ -n "$(ls "$state/lists" 2>/dev/null | grep -v partial)" ] || "${apt[@]}" update
tmp=$(mktemp -d "$dest.XXXX")
for p in "$package" "${extras[@]}"; do
  (cd "$state/debs" && "${apt[@]}" download "$p")
  dpkg-deb -x "$state"/debs/"${p}"_*.deb "$tmp"
done
mv "$tmp" "$dest"
