#!/usr/bin/env bash
# The system programs two tests drive (Debian packages): chromium + chromium-driver for the
# demo-page browser test, docker-compose for `docker-compose config`. `make test` runs this
# first: nothing to do when they are present, apt-get install as root, otherwise a one-line
# error saying what is missing. The tests fail (never skip) without them.
set -euo pipefail
missing=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || missing+=(chromium chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing Debian packages ${missing[*]}; run 'make system-deps' as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
