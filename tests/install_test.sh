#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install the library into scratch prefixes and build a program written only
# against the public contract (tests/contract/contract_program.c) as a user
# would: with pkg-config and with CMake's find_package, shared and static,
# with gcc and with clang; and through add_subdirectory.
#   install_test.sh BUILD_DIR SOURCE_DIR [SANITIZE=ON|OFF]
# 1. BUILD_DIR (the build under test, maybe with sanitizers) is installed and
#    checked with gcc: files in place, pkg-config and find_package programs run.
# 2. The outside project tests/install builds tapegrad by add_subdirectory
#    (tests and examples must be off there) and links the tapegrad:: names.
# 3. The `lib` preset (the library alone, no sanitizers, so that clang can link
#    it) is built, installed and used by gcc and clang, shared and static, via
#    pkg-config and find_package; a version find_package cannot satisfy fails.
set -Eeuo pipefail
build=$(realpath "$1") src=$(realpath "$2") sanitize=${3:-OFF}
san=()
# a library built with sanitizers needs their runtimes in the program too
case "$sanitize" in ON|on|1|TRUE|true) san=(-fsanitize=address,undefined) ;; esac
work=$(mktemp -d)
log=$work/output.log
trap 'rm -rf "$work"' EXIT
# the commands' own output goes to $log, shown when a step fails
trap 'echo "install test: FAILED at line $LINENO; the last output:"; tail -n 40 "$log"' ERR
program=$src/tests/contract/contract_program.c
say() { echo "install test: $*"; }

# run PROGRAM with the installed libdir: the shared build must find the
# library there, the static one must not need it
run() {
  local prog=$1 libdir=$2
  (cd "$work" && LD_LIBRARY_PATH="$libdir" "$prog" >>"$log" 2>&1) || { say "$prog failed"; exit 1; }
  # (ldd's output in full first: `ldd | grep -q` under pipefail fails when grep
  # stops reading early and ldd gets SIGPIPE)
  local deps
  deps=$(ldd "$prog")
  case $deps in *libtapegrad.so*) echo shared ;; *) echo static ;; esac
}

# pkg-config: CC PREFIX LINKAGE [extra flags]
pc_program() {
  local cc=$1 prefix=$2 linkage=$3; shift 3
  local pcdir libdir out=$work/pc_${cc}_${linkage}
  pcdir=$(dirname "$(find "$prefix" -name tapegrad.pc | head -n 1)")
  libdir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir tapegrad)
  if [ "$linkage" = shared ]; then
    "$cc" -std=c11 -Wall -Wextra -Werror "$program" \
      $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs tapegrad) "$@" -o "$out"
  else # the archive by path, then what --static adds for it
    "$cc" -std=c11 -Wall -Wextra -Werror "$program" $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags tapegrad) \
      "$libdir/libtapegrad.a" \
      $(PKG_CONFIG_PATH=$pcdir pkg-config --static --libs tapegrad | sed 's/-ltapegrad//') "$@" -o "$out"
  fi
  got=$(run "$out" "$libdir")
  [ "$got" = "$linkage" ] || { say "pkg-config $cc $linkage program is linked $got"; exit 1; }
  say "pkg-config, $cc, $linkage: builds and runs"
}

# find_package: CC PREFIX [extra C flags]
cmake_programs() {
  local cc=$1 prefix=$2 flags=${3:-}
  local bdir=$work/cmake_$cc libdir
  cmake -S "$src/tests/install" -B "$bdir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" \
    -DTG_PROGRAM="$program" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >>"$log" 2>&1
  cmake --build "$bdir" >>"$log" 2>&1
  libdir=$(dirname "$(find "$prefix" -name 'libtapegrad.so' | head -n 1)")
  for linkage in shared static; do
    got=$(run "$bdir/app_$linkage" "$libdir")
    [ "$got" = "$linkage" ] || { say "find_package $cc app_$linkage is linked $got"; exit 1; }
    say "find_package, $cc, tapegrad::tapegrad$([ $linkage = static ] && echo _static): builds and runs"
  done
}

# ---- 1. the build under test ----
p1=$work/prefix1
cmake --install "$build" --prefix "$p1" >>"$log" 2>&1
test -f "$p1/include/tapegrad.h"
test -x "$p1/bin/tg-mlp" || { say "tg-mlp was not installed"; exit 1; }
lib=$(dirname "$(find "$p1" -name 'libtapegrad.so.0' | head -n 1)")
[ -n "$lib" ] && [ -L "$lib/libtapegrad.so.0" ] && [ -f "$lib/libtapegrad.a" ] ||
  { say "libtapegrad.so.0 (SOVERSION link) or libtapegrad.a missing"; exit 1; }
[ "$(readelf -d "$lib/libtapegrad.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')" = libtapegrad.so.0 ] ||
  { say "the shared library's SONAME is not libtapegrad.so.0"; exit 1; }
test -f "$lib/cmake/tapegrad/tapegradConfig.cmake" && test -f "$lib/cmake/tapegrad/tapegradConfigVersion.cmake"
if grep -qE -- '-fopenmp|gomp' "$lib/pkgconfig/tapegrad.pc"; then
  say "tapegrad.pc names OpenMP: the library threads with its own pool"; exit 1
fi
pc_program gcc "$p1" shared "${san[@]}"
cmake_programs gcc "$p1" "${san[*]}"

# ---- 2. add_subdirectory ----
sub=$work/subdir
cmake -S "$src/tests/install" -B "$sub" -DCMAKE_C_COMPILER=gcc -DTG_SUBDIR="$src" \
  -DTG_PROGRAM="$program" -DCMAKE_BUILD_TYPE=Debug >>"$log" 2>&1
cmake --build "$sub" -j2 >>"$log" 2>&1
[ "$(run "$sub/app_shared" "$sub/tapegrad")" = shared ] && [ "$(run "$sub/app_static" "")" = static ]
say "add_subdirectory: tapegrad::tapegrad and tapegrad::tapegrad_static build and run"

# ---- 3. the lib preset, gcc and clang ----
lb=$work/lib p3=$work/prefix3
cmake -S "$src" --preset lib -B "$lb" -DCMAKE_C_COMPILER=gcc >>"$log" 2>&1
grep -q '^TG_BUILD_TESTS:BOOL=OFF' "$lb/CMakeCache.txt"
cmake --build "$lb" -j2 >>"$log" 2>&1
cmake --install "$lb" --prefix "$p3" >>"$log" 2>&1
compilers=(gcc)
if command -v clang >>"$log" 2>&1; then compilers+=(clang); else say "clang not installed: SKIPPED its builds (script/bootstrap installs it)"; fi
for cc in "${compilers[@]}"; do
  pc_program "$cc" "$p3" shared
  pc_program "$cc" "$p3" static
  rm -rf "$work/cmake_$cc"
  cmake_programs "$cc" "$p3"
done
if cmake -S "$src/tests/install" -B "$work/toonew" -DCMAKE_PREFIX_PATH="$p3" -DTG_PROGRAM="$program" \
     -DTG_WANT_VERSION=9.0 >>"$log" 2>&1; then
  say "find_package(tapegrad 9.0) was satisfied by $(sed -n 's/^Version: //p' "$p3"/lib*/pkgconfig/tapegrad.pc)"
  exit 1
fi
say "find_package(tapegrad 9.0) fails, as it must"
say "all passed"
