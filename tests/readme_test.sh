#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The README's example must keep compiling and running against the library:
# extract its C block, build it with the static library, run it.
#   readme_test.sh SOURCE_DIR INCLUDE_DIR STATIC_LIB "LINK FLAGS..."
set -euo pipefail
src=$1 inc=$2 lib=$3; shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
awk '/^```c$/{on=1; next} /^```$/{if(on) exit} on' "$src/README.md" > "$dir/readme.c"
test -s "$dir/readme.c" || { echo "no C block found in README.md"; exit 1; }
cc -std=c11 -Wall -Wextra -Werror -I"$inc" "$dir/readme.c" "$lib" "$@" -o "$dir/readme"
"$dir/readme"
echo "README example: builds and runs"
