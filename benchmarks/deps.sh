#!/usr/bin/env bash
# What `make bench` needs beyond the Python environment: espeak-ng (Debian) speaks the
# generalisation benchmark's voices. Nothing to do when present; apt-get install as root;
# otherwise a one-line error saying what is missing.
set -euo pipefail
command -v espeak-ng >/dev/null && exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "bench-deps: missing the Debian package espeak-ng; run 'make bench' as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 espeak-ng >/dev/null
