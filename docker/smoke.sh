#!/usr/bin/env bash
# Build both images and run the in-container smoke checks, with no Docker engine:
# ../shared/tools/build-image (buildah, chroot isolation) builds the Dockerfile and runs
# commands in the result.  `make docker-smoke` runs this; it takes minutes, not seconds.
#
#   1. build the train and serve targets (timed), print their sizes
#   2. train image: `distilwave data fetch` finds the baked-in corpus (no download)
#   3. train image: the smoke pipeline on that corpus; its bundle comes out as a tar on stdout
#   4. serve image: the bundle and docker/smoke_serve.py go in as a tar on stdin; the script
#      starts the service and checks /readyz, the HEALTHCHECK, vocode, resynthesize, /metrics
#      and the SIGTERM drain
#
# BUILD_IMAGE (the tool), SMOKE_OUT (logs and the bundle, default /tmp/distilwave-docker-smoke)
# and SKIP_BUILD=1 (reuse the images) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_IMAGE=${BUILD_IMAGE:-$(pwd)/../shared/tools/build-image}
OUT=${SMOKE_OUT:-/tmp/distilwave-docker-smoke}
TRAIN=localhost/distilwave:train
SERVE=localhost/distilwave:serve
mkdir -p "$OUT"

say() { printf '\n=== %s\n' "$*"; }

if [[ ! -x $BUILD_IMAGE ]]; then
  echo "docker-smoke: $BUILD_IMAGE not found (set BUILD_IMAGE)" >&2
  exit 2
fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  for target in train serve; do
    say "build --target $target"
    start=$SECONDS
    # docker format keeps HEALTHCHECK (OCI images have no field for it)
    "$BUILD_IMAGE" build --target "$target" -t "localhost/distilwave:$target" . -- \
      --format docker >"$OUT/build-$target.log" 2>&1 ||
      { tail -n 40 "$OUT/build-$target.log"; exit 1; }
    echo "built localhost/distilwave:$target in $((SECONDS - start)) s (log: $OUT/build-$target.log)"
  done
fi

say "image sizes"
"$BUILD_IMAGE" size "$TRAIN"
"$BUILD_IMAGE" size "$SERVE"

say "train: distilwave data fetch (the corpus baked into the image; no download)"
"$BUILD_IMAGE" run "$TRAIN" -- distilwave data fetch 2>&1 | tee "$OUT/fetch.log"
if grep -q "apt-get download" "$OUT/fetch.log"; then
  echo "docker-smoke: data fetch downloaded the corpus instead of finding it" >&2
  exit 1
fi

say "train: distilwave pipeline --preset smoke (default corpus) as user $(
  "$BUILD_IMAGE" run "$TRAIN" -- id -un)"
start=$SECONDS
"$BUILD_IMAGE" run "$TRAIN" -- sh -c \
  'distilwave pipeline --preset smoke --run-dir /artifacts/smoke >&2 \
   && ls -l /artifacts/smoke/bundle >&2 && tar -C /artifacts/smoke -cf - bundle' \
  >"$OUT/bundle.tar" 2> >(tee "$OUT/pipeline.log" >&2)
echo "smoke pipeline in the train container: $((SECONDS - start)) s"
tar -tf "$OUT/bundle.tar" | sed 's/^/  bundle file: /'

say "serve: /readyz, HEALTHCHECK, vocode, resynthesize, /metrics, SIGTERM drain"
rm -rf "$OUT/bundle" && tar -xf "$OUT/bundle.tar" -C "$OUT"
tar -cf - -C "$OUT" bundle -C "$(pwd)/docker" smoke_serve.py |
  "$BUILD_IMAGE" run "$SERVE" -- sh -c 'mkdir -p /tmp/smoke && tar -xf - -C /tmp/smoke \
    && python3 /tmp/smoke/smoke_serve.py /tmp/smoke/bundle' 2>&1 | tee "$OUT/serve.log"
grep -q "all checks passed" "$OUT/serve.log"

say "docker-smoke: passed (logs in $OUT)"
