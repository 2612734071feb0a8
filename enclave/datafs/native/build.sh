#!/bin/sh
# Build the native decrypting mount (enclave-datafs) beside this script, or into $1. Needs gcc, pkg-config, libfuse3-dev and libssl-dev (Debian). `make` calls this.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/enclave-datafs"}
mkdir -p "$(dirname "$out")"
flags=$(pkg-config --cflags --libs fuse3 openssl) || {
    echo "enclave-datafs: pkg-config cannot find fuse3 and openssl (apt-get install libfuse3-dev libssl-dev pkg-config)" >&2
    exit 1
}
# shellcheck disable=SC2086  # the flags are words
${CC:-gcc} -std=gnu11 -Wall -Wextra -Werror -O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
    -o "$out.tmp" "$here/datafs.c" $flags
mv "$out.tmp" "$out"
echo "built $out"
