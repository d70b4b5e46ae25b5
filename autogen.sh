#!/bin/sh
# Regenerate the build system: ./autogen.sh && ./configure && make
set -e
cd "$(dirname "$0")"
mkdir -p m4 # ACLOCAL_AMFLAGS = -I m4; nothing of ours in it yet
autoreconf --force --install --verbose
