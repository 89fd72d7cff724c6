#!/usr/bin/env bash
# Install the library into a scratch prefix and build a program written only
# against the public contract with nothing but pkg-config, as a user would.
#   install_test.sh BUILD_DIR SOURCE_DIR [SANITIZE=ON|OFF]
set -euo pipefail
build=$1 src=$2 sanitize=${3:-OFF}
extra=()
# a library built with sanitizers needs their runtimes in the program too
case "$sanitize" in ON|on|1|TRUE|true) extra=(-fsanitize=address,undefined) ;; esac
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
pcdir=$(dirname "$(find "$prefix" -name tapegrad.pc | head -n 1)")
export PKG_CONFIG_PATH="$pcdir"
test -f "$prefix/include/tapegrad.h"
test -x "$prefix/bin/tg-mlp" || { echo "tg-mlp was not installed"; exit 1; }
cc -std=c11 -Wall -Wextra -Werror "$src/tests/contract/contract_program.c" \
   $(pkg-config --cflags --libs tapegrad) -lm "${extra[@]}" -o "$prefix/contract_program"
cd "$prefix"
LD_LIBRARY_PATH="$(pkg-config --variable=libdir tapegrad)" ./contract_program
echo "install test: the installed library and header build and run the contract program"
