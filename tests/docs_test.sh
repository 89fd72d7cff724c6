#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The documentation's programs must keep compiling and running against the library.
#
#   docs_test.sh blocks SOURCE_DIR STATIC_LIB "LINK FLAGS..."
#     Every ```c block of README.md and docs/*.md whose first line is an #include
#     claims to be a program: it is compiled (-Wall -Wextra -Werror, C11, with the
#     public header and the library's internal include paths), and when it defines
#     main it is linked with the static library and run. Other ```c blocks are
#     fragments (statements, declarations quoted from a header) and are not built.
#   docs_test.sh paths SOURCE_DIR
#     Every docs/... path named in src, ops, include, tests and examples exists.
set -euo pipefail
mode=$1 src=$2
shift 2

if [ "$mode" = paths ]; then
    missing=0
    while IFS=: read -r file line path; do
        path=${path%.}                      # a path ending a sentence
        if [ ! -e "$src/$path" ]; then
            echo "$file:$line names $path, which does not exist"
            missing=1
        fi
    done < <(cd "$src" && grep -rnoE 'docs/[A-Za-z0-9_./-]*[A-Za-z0-9_/]' \
                 src ops include tests examples --exclude=docs_test.sh)
    [ "$missing" = 0 ] && echo "every docs/ path named in the sources exists"
    exit "$missing"
fi

lib=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
inc=(-I"$src/include" -I"$src/src/engine" -I"$src/src/kernels" -I"$src/src/toolkit" -I"$src/ops")
n=0 built=0 ran=0
for md in "$src/README.md" "$src"/docs/*.md; do
    rel=${md#"$src"/}
    # split the ```c blocks into block-<k>.c files, k counting from 1 per document
    rm -f "$dir"/block-*.c
    awk -v dir="$dir" '/^```c$/{on=1; k++; next} /^```$/{on=0; next}
                       on{print > (dir "/block-" k ".c")}' "$md"
    for f in "$dir"/block-*.c; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        head -n1 "$f" | grep -q '^#include' || continue
        k=${f##*/block-}
        k=${k%.c}
        what="$rel, C block $k"
        if grep -q '^int main(' "$f"; then
            cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror "${inc[@]}" "$f" \
                "$lib" "$@" -o "$dir/prog" || { echo "$what: does not build"; exit 1; }
            built=$((built + 1))
            # a program that reads a data set runs where the data set is installed
            data=$(grep -oE '"/usr/share/datasets/[^"]*"' "$f" | head -n1 | tr -d '"' || true)
            if [ -n "$data" ] && [ ! -e "$data" ]; then
                echo "$what: builds; not run ($data is not installed)"
                continue
            fi
            (cd "$dir" && ./prog > "$dir/out.txt") || { cat "$dir/out.txt"; echo "$what: fails"; exit 1; }
            ran=$((ran + 1))
            echo "$what: builds and runs"
        else
            cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror "${inc[@]}" -c "$f" \
                -o "$dir/block.o" || { echo "$what: does not compile"; exit 1; }
            built=$((built + 1))
            echo "$what: compiles"
        fi
    done
done
echo "$n C blocks, $built programs built, $ran run"
