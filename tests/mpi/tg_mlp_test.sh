#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/mpi/tg_mlp_test.sh CASE MPIRUN TG_MLP WORKDIR: tg-mlp train --distributed under
# mpirun with 2 ranks, run by ctest. Prints "PASS <what>" or "FAIL <what>" lines; exit 0
# pass, 1 fail, 77 skipped (no mpirun).
#   equivalence  2 ranks with --batch 64 (32 each) end with the model of one process
#                with --batch 64: predicted probabilities within 1e-5 relative (f32; the
#                order of the gradient sums is the only difference); rank 0 alone prints
#   rank_error   a data path that fails on rank 1 alone ends the job within seconds with
#                rank 1's message (MPI_Abort); a data set of another shape on rank 1 (an
#                error found at a sync point) ends both ranks with its message, no hang
set -u
case_name=$1 mpirun=${2:-} mlp=$3 work=$4
if [ -z "$mpirun" ] || ! command -v "$mpirun" >/dev/null 2>&1; then
  echo "SKIP mpi_tg_mlp_$case_name: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
  exit 77
fi
w="$work/tg_mlp_$case_name"
mkdir -p "$w"
rm -f "$w"/*
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
export OMP_NUM_THREADS=1
export OMPI_MCA_mpi_yield_when_idle=1
mpi() { local np=$1; shift; "$mpirun" --allow-run-as-root --oversubscribe -np "$np" "$@"; }
status=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; status=1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# a CSV of 600 rows: NF features, 3 classes (clusters around three centres), label last
make_csv() { # make_csv PATH NF
  awk -v nf="$2" 'BEGIN {
    srand(7); printf "f1"; for (j = 2; j <= nf; j++) printf ",f%d", j; print ",label"
    for (i = 0; i < 600; i++) { c = i % 3
      for (j = 1; j <= nf; j++) printf "%s%.5f", (j > 1 ? "," : ""), (c == j % 3) * 2 + rand() - 0.5
      print "," c } }' > "$1"
}
train_args=(--layers 16 --epochs 3 --batch 64 --seed 3 --opt adam --threads 1 -q)

# failing_job LOG RANK1_DATA WHAT: 2 ranks, rank 0 on data.csv and rank 1 on RANK1_DATA
# (in $w); the job must fail, and within seconds
failing_job() {
  local log=$1 bad=$2 what=$3 t0 rc t
  t0=$(date +%s.%N)
  mpi 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then d="$0/$2"; else d="$0/data.csv"; fi
               exec "$1" train --distributed --data "$d" --layers 16 --epochs 3 --out "$0/m.safetensors"' \
    "$w" "$mlp" "$bad" >"$log" 2>&1
  rc=$? t=$(elapsed "$t0")
  cat "$log"
  [ $rc -ne 0 ] && pass "$what: the job fails (exit $rc) in ${t}s" || fail "$what: the job exits 0"
  [ "$(awk -v t="$t" 'BEGIN { print (t < 30) }')" = 1 ] && pass "within seconds" || fail "took ${t}s"
}

case "$case_name" in
equivalence)
  make_csv "$w/data.csv" 4
  "$mlp" train --data "$w/data.csv" "${train_args[@]}" --out "$w/one.safetensors" \
    >"$w/one.log" 2>&1 || fail "one process trains ($(tail -3 "$w/one.log"))"
  mpi 2 "$mlp" train --distributed --data "$w/data.csv" --layers 16 --epochs 3 --batch 64 \
    --seed 3 --opt adam --threads 1 --out "$w/two.safetensors" >"$w/two.log" 2>&1 \
    && pass "2 ranks train" || fail "2 ranks train ($(tail -5 "$w/two.log"))"
  cat "$w/two.log"
  n=$(grep -c "^test accuracy" "$w/two.log")
  [ "$n" = 1 ] && pass "rank 0 alone prints the summary" || fail "$n summaries printed"
  "$mlp" predict --model "$w/one.safetensors" --data "$w/data.csv" --proba >"$w/one.p" \
    || fail "predict with the one-process model"
  "$mlp" predict --model "$w/two.safetensors" --data "$w/data.csv" --proba >"$w/two.p" \
    || fail "predict with the 2-rank model"
  d=$(paste -d, "$w/one.p" "$w/two.p" | awk -F, '{ h = NF / 2
        for (i = 1; i <= h; i++) { a = $i; b = $(i + h); e = a - b; if (e < 0) e = -e
          s = (a < 0 ? -a : a); if (s < 1e-3) s = 1e-3; if (e / s > m) m = e / s } }
        END { printf "%.3g", m + 0 }')
  rows=$(wc -l <"$w/one.p")
  [ "$rows" -gt 0 ] && [ "$(awk -v d="$d" 'BEGIN { print (d <= 1e-5) }')" = 1 ] \
    && pass "2 ranks x 32 = 1 process x 64: probabilities within $d relative ($rows rows)" \
    || fail "2 ranks x 32 against 1 process x 64: relative difference $d ($rows rows)"
  cmp -s "$w/one.safetensors" "$w/two.safetensors" && echo "(the two models are bit-identical)"
  ;;
rank_error)
  make_csv "$w/data.csv" 4
  make_csv "$w/other.csv" 5
  # rank 1 alone: a data path that does not exist
  failing_job "$w/path.log" nonexistent.csv "a bad path on rank 1"
  grep -q "nonexistent.csv" "$w/path.log" && grep -q "tg-mlp: rank 1 failed" "$w/path.log" \
    && pass "rank 1's message ends the job" || fail "rank 1's message is missing"
  # rank 1: another number of features: the parameters differ, found at the first sync point
  failing_job "$w/shape.log" other.csv "parameters of another shape on rank 1"
  n=$(grep -c "tg-mlp: tg_mpi_broadcast_params: the ranks have different parameters" "$w/shape.log")
  [ "$n" = 2 ] && pass "both ranks stop with the sync point's message" \
    || fail "$n ranks printed the sync point's message"
  [ ! -e "$w/m.safetensors" ] && pass "no model saved" || fail "a model was saved"
  ;;
*)
  echo "FAIL unknown case $case_name"
  exit 1
  ;;
esac
exit $status
