#!/usr/bin/env bash
# Builds the byoi rescue system (kernel + initramfs that servers network-boot into).
# The logic and its options live beside the rescue's own sources: rescue/build.sh (--help).
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../rescue/build.sh" "$@"
