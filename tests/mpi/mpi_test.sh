#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/mpi/mpi_test.sh CASE MPIRUN BINDIR WORKDIR: one MPI test case, run by ctest.
# Prints "PASS <what>" or "FAIL <what>" lines; exit 0 pass, 1 fail, 77 skipped
# (no mpirun). Open MPI refuses to run as root and to start more processes than
# cores unless told: --allow-run-as-root and --oversubscribe (CI runs as root on
# a 2-core machine).
set -u
case_name=$1 mpirun=${2:-} bindir=$3 work=$4
if [ -z "$mpirun" ] || ! command -v "$mpirun" >/dev/null 2>&1; then
  echo "SKIP mpi_$case_name: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
  exit 77
fi
mkdir -p "$work/$case_name"
w="$work/$case_name"
rm -f "$w"/*
# Open MPI's own allocations are not freed at exit: leak reports off, the other
# sanitizer checks stay on
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
export OMP_NUM_THREADS=1
# a waiting rank yields its core instead of spinning: CI machines are shared
export OMPI_MCA_mpi_yield_when_idle=1
mpi() { local np=$1; shift; "$mpirun" --allow-run-as-root --oversubscribe -np "$np" "$@"; }
train="$bindir/mpi_train"
status=0
pass() { echo "PASS $*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "FAIL $*"; status=1; }

# failing_job LOG ARGS...: 2 ranks of mpi_train that must fail, and within seconds
failing_job() {
  local log=$1; shift
  local t0 rc t
  t0=$(date +%s.%N)
  mpi 2 "$train" "$@" >"$log" 2>&1
  rc=$? t=$(elapsed "$t0")
  cat "$log"
  [ $rc -ne 0 ] && pass "the job fails (exit $rc) in ${t}s" || fail "the job exits 0"
  [ "$(awk -v t="$t" 'BEGIN { print (t < 30) }')" = 1 ] && pass "within seconds" || fail "took ${t}s"
}
# checkpoint_loads PATH WHAT: the checkpoint rank 0 wrote before the failure loads
checkpoint_loads() {
  mpi 1 "$train" --load "$1" && pass "the checkpoint $2 loads" \
    || fail "the checkpoint $2, written before the failure, does not load"
}

case "$case_name" in
equivalence_f64|equivalence_f32)
  dt=${case_name#equivalence_}
  tol=$([ "$dt" = f64 ] && echo 1e-12 || echo 1e-5)
  # one process, global batch 64, against 2 ranks with 32 each, 200 steps
  mpi 1 "$train" --dtype "$dt" --steps 200 --batch 64 --out "$w/one.safetensors" >"$w/one.log" 2>&1 \
    || fail "1 rank trains ($(tail -3 "$w/one.log"))"
  # the gradients summed in shared memory (the default on one machine), then through
  # MPI_Allreduce (the way across machines)
  mpi 2 "$train" --dtype "$dt" --steps 200 --batch 64 --compare "$w/one.safetensors" --rtol "$tol" \
    >"$w/two.log" 2>&1 && pass "2 ranks x 32 = 1 rank x 64 within $tol ($dt, shared memory)" \
    || fail "2 ranks x 32 against 1 rank x 64 ($dt, shared memory)"
  mpi 2 "$train" --dtype "$dt" --steps 200 --batch 64 --compare "$w/one.safetensors" --rtol "$tol" \
    --allreduce >"$w/two_allreduce.log" 2>&1 \
    && pass "2 ranks x 32 = 1 rank x 64 within $tol ($dt, MPI_Allreduce)" \
    || fail "2 ranks x 32 against 1 rank x 64 ($dt, MPI_Allreduce)"
  # the step sharded (tg_mpi_step): each rank sums and updates its half of every
  # parameter, the data and the momentum shared
  mpi 2 "$train" --dtype "$dt" --steps 200 --batch 64 --compare "$w/one.safetensors" --rtol "$tol" \
    --sharded >"$w/two_sharded.log" 2>&1 \
    && pass "2 ranks x 32 = 1 rank x 64 within $tol ($dt, sharded step)" \
    || fail "2 ranks x 32 against 1 rank x 64 ($dt, sharded step)"
  cat "$w/one.log" "$w/two.log" "$w/two_allreduce.log" "$w/two_sharded.log"
  ;;
rerun_identical)
  for run in 1 2; do
    mpi 2 "$train" --dtype f64 --steps 200 --hash --resume-out "$w/state$run.bin" \
      >"$w/run$run.log" 2>&1 || fail "run $run"
  done
  mpi 2 "$train" --dtype f32 --steps 200 --hash >"$w/run3.log" 2>&1 || fail "run 3"
  mpi 2 "$train" --dtype f32 --steps 200 --hash >"$w/run4.log" 2>&1 || fail "run 4"
  mpi 2 "$train" --dtype f64 --steps 200 --hash --allreduce >"$w/run5.log" 2>&1 || fail "run 5"
  mpi 2 "$train" --dtype f64 --steps 200 --hash --sharded --resume-out "$w/state6.bin" \
    >"$w/run6.log" 2>&1 || fail "run 6"
  h1=$(grep hash "$w/run1.log") h2=$(grep hash "$w/run2.log")
  h3=$(grep hash "$w/run3.log") h4=$(grep hash "$w/run4.log") h5=$(grep hash "$w/run5.log")
  h6=$(grep hash "$w/run6.log")
  [ -n "$h1" ] && [ "$h1" = "$h2" ] && pass "2 ranks, f64: reruns bit-identical ($h1)" \
    || fail "f64 reruns differ: '$h1' '$h2'"
  [ -n "$h3" ] && [ "$h3" = "$h4" ] && pass "2 ranks, f32: reruns bit-identical ($h3)" \
    || fail "f32 reruns differ: '$h3' '$h4'"
  # two ranks: w0 g0 + w1 g1 is one rounded sum whichever rank adds it, so the
  # shared-memory sum and MPI_Allreduce give the same bits
  [ -n "$h5" ] && [ "$h1" = "$h5" ] && pass "2 ranks, f64: shared memory = MPI_Allreduce, bit for bit" \
    || fail "shared memory and MPI_Allreduce differ: '$h1' '$h5'"
  # the sharded step updates each element as the whole step does: the same bits,
  # and rank 0's saved optimiser state (momentum) is whole, not only its half
  [ -n "$h6" ] && [ "$h1" = "$h6" ] && pass "2 ranks, f64: sharded step = whole step, bit for bit" \
    || fail "the sharded step differs: '$h1' '$h6'"
  cmp -s "$w/state1.bin" "$w/state6.bin" && pass "rank 0 saves the same optimiser state sharded" \
    || fail "the optimiser state rank 0 saved differs when the step is sharded"
  cmp -s "$w/state1.bin" "$w/state2.bin" && pass "the saved state is the same on a rerun" \
    || fail "the saved optimiser state differs between reruns"
  ;;
bad_data_path)
  failing_job "$w/out.log" --bad-data-rank 1
  grep -q "mpi_train: rank 0: .*rank 1 failed: tg_load_csv: .*/nonexistent/" "$w/out.log" \
    && pass "rank 0 stops with rank 1's message" || fail "rank 0 does not report rank 1's error"
  grep -q "mpi_train: rank 1: tg_load_csv: .*/nonexistent/" "$w/out.log" \
    && pass "rank 1 reports its own error" || fail "rank 1's message is missing"
  ;;
fail_after_checkpoint)
  # the step sharded: the checkpoint comes from the one shared copy of the parameters
  failing_job "$w/out.log" --ckpt "$w/ckpt.safetensors" --ckpt-every 20 --fail-rank 1 --fail-step 70 \
    --sharded
  grep -q "rank 1 failed: mpi_train: injected failure at step 70" "$w/out.log" \
    && pass "every rank stops with rank 1's message" || fail "rank 1's message did not reach rank 0"
  checkpoint_loads "$w/ckpt.safetensors" "of step 60"
  ;;
failed_alone)
  # rank 1 fails after the gradients moved into shared memory and leaves without a
  # sync point: its tg_mpi_free must not wait for rank 0 (which waits at the next
  # sync point), and tg_mpi_abort ends the job
  failing_job "$w/out.log" --fail-rank 1 --fail-step 30 --alone
  # ... also when the parameters and the state live in the window too
  failing_job "$w/out_sharded.log" --fail-rank 1 --fail-step 30 --alone --sharded
  grep -q "tapegrad: rank 1: mpi_train: injected failure at step 30" "$w/out_sharded.log" \
    && pass "rank 1's message, then the job ends (sharded step)" \
    || fail "rank 1's message is missing (sharded step)"
  grep -q "tapegrad: rank 1: mpi_train: injected failure at step 30" "$w/out.log" \
    && pass "rank 1's message, then the job ends" || fail "rank 1's message is missing"
  ;;
killed_rank)
  failing_job "$w/out.log" --ckpt "$w/ckpt.safetensors" --ckpt-every 20 --kill-rank 1 --kill-step 50
  grep -qi "signal 9\|killed" "$w/out.log" && pass "mpirun says a rank was killed" \
    || fail "no message about the killed rank"
  checkpoint_loads "$w/ckpt.safetensors" "of step 40"
  ;;
example)
  mpi 2 "$bindir/mpi_mlp" --generated --epochs 3 --ckpt "$w/mlp.safetensors" >"$w/out.log" 2>&1 \
    && pass "mpi_mlp trains on 2 ranks" || fail "mpi_mlp on 2 ranks"
  cat "$w/out.log"
  [ -s "$w/mlp.safetensors" ] && pass "rank 0 wrote the checkpoint" || fail "no checkpoint"
  # one end-of-epoch line per epoch (on a terminal the progress line is redrawn in place)
  n=$(grep -o "epoch [0-9]/3  loss" "$w/out.log" | wc -l)
  [ "$n" = 3 ] && pass "only rank 0 prints progress (3 epoch lines)" || fail "$n epoch lines"
  grep -q "2 rank(s), global batch 256: test accuracy 0\.[89]" "$w/out.log" \
    && pass "test accuracy >= 0.80" || fail "accuracy"
  ;;
*) echo "FAIL unknown case $case_name"; exit 1 ;;
esac
exit $status
