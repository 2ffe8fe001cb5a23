#!/usr/bin/env bash
# Provides the Slurm that openpcs clusters run: 24.11.5, with --enable-multiple-slurmd (many slurmd on
# one host). Where the distribution packages 24.11 (Debian 13) it installs them; otherwise it builds
# Debian's own upstream tarball of 24.11.5 once per machine into a prefix of its own, which openpcs
# finds by absolute path. Does nothing when that build is already there.
#   OPENPCS_SLURM_ROOT   where builds live (default /opt/openpcs/slurm); this one goes to ROOT/24.11.5
set -euo pipefail

version=24.11.5
root=${OPENPCS_SLURM_ROOT:-/opt/openpcs/slurm}
prefix="$root/$version"
export DEBIAN_FRONTEND=noninteractive

installed_version() {  # "24.11.5" from `slurmctld -V` ("slurm 24.11.5"), or nothing
    [ -x "$1" ] && "$1" -V 2>/dev/null | awk '{print $2}'
}

if [ "$(installed_version "$prefix/sbin/slurmctld")" = "$version" ]; then
    exit 0
fi

# Debian 13 and later package 24.11: slurmctld, slurmd and the clients land in /usr, where openpcs
# looks too. munge is needed either way.
candidate=$(apt-cache policy slurmctld 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ "$candidate" == 24.11.* ]]; then
    if [[ "$(installed_version /usr/sbin/slurmctld)" != 24.11.* ]]; then
        echo "== installing Slurm $candidate from the distribution's packages"
        apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
    exit 0
fi

started=$(date +%s)
step() { echo "== Slurm $version build [$(( $(date +%s) - started ))s] $*"; }

# Every build dependency is in Debian 12. munge is the daemon the clusters run.
build_deps=(build-essential pkg-config libmunge-dev libjson-c-dev libjwt-dev libyaml-dev libhttp-parser-dev
    default-libmysqlclient-dev liblua5.1-0-dev libdbus-1-dev libhwloc-dev liblz4-dev libpam0g-dev
    libcurl4-openssl-dev munge curl)
missing=()
for package in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing build dependencies: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/openpcs-slurm-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download user (_apt) writes the index lists here

# The source comes from trixie's source index, read through a sources list of our own: the host's
# apt sources stay as they are.
step "reading Debian trixie's source index"
mkdir -p "$work/lists/partial"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$work/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
    -o "Dir::State::Lists=$work/lists")
apt-get -qq "${apt_private[@]}" update
# One line per file of the source package: 'URI' NAME SIZE SHA256:HASH. Upstream's tarball is all we need.
line=$(apt-get -qq "${apt_private[@]}" source --print-uris slurm-wlm 2>/dev/null | grep "_$version.orig.tar" || true)
if [ -z "$line" ]; then
    echo "Debian trixie no longer offers slurm-wlm $version's source; set OPENPCS_SLURM_ROOT to a directory" \
         "holding a $version build ($root/$version/sbin/slurmctld), or update this script's version." >&2
    exit 1
fi
read -r uri name _ hash <<< "$line"
uri=${uri//\'/}
step "downloading $name"
curl -fsS -o "$work/$name" "$uri"
echo "${hash#SHA256:}  $work/$name" | sha256sum -c --quiet -

step "configuring (prefix $prefix)"
mkdir "$work/src"
tar -xf "$work/$name" -C "$work/src" --strip-components=1  # upstream's top directory is slurm-slurm-24-11-5-1
cd "$work/src"
./configure -q --prefix="$prefix" --sysconfdir="$prefix/etc" --disable-debug --without-pmix \
    --enable-multiple-slurmd > "$work/configure.log" 2>&1 || { tail -30 "$work/configure.log"; exit 1; }
step "compiling with $(nproc) jobs (about 4 minutes on 2 cores)"
make -s -j"$(nproc)" > "$work/make.log" 2>&1 || { tail -30 "$work/make.log"; exit 1; }
step "installing"
# Installed into a scratch prefix first and moved into place whole, so a build cut short never looks done.
make -s install DESTDIR="$work/install" > "$work/install.log" 2>&1 || { tail -30 "$work/install.log"; exit 1; }
mkdir -p "$root"
rm -rf "$prefix"
mv "$work/install$prefix" "$prefix"
step "done: $("$prefix/sbin/slurmctld" -V)"
