#!/usr/bin/env bash
# cli_test.sh: tg-mlp end to end. Usage: cli_test.sh TG_MLP SOURCE_DIR WORK_DIR
#
# On a generated 2-class CSV: train (--json) -> eval (--json) -> predict, with
# and without the label column, and the same seed giving the same model file;
# on the tiny IDX fixtures: train, eval and predict on a directory and on an
# image file; then bad arguments and bad inputs, each of which must exit
# non-zero with a "tg-mlp: ..." message and without a sanitizer report.
set -u
BIN=$1
SRC=$2
WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
cd "$WORK" || exit 1

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# the value of "key" in a one-line JSON object (numbers and strings)
json_get() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }
# awk comparison: ge VALUE MIN
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 >= b + 0) }'; }
# the output of a run must not come from a sanitizer or a crash
clean() { ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error|Segmentation' "$1"; }

# ---- a 2-class CSV: two noisy rings (not linearly separable), a constant
# ---- column, features on very different scales (so --standardize matters)
awk 'BEGIN {
    srand(7); print "x1,x2,const,cls";
    for (i = 0; i < 400; i++) {
        c = i % 2; r = (c ? 2.0 : 0.8) + 0.3 * (rand() - 0.5); t = 6.2831853 * rand();
        printf "%.5f,%.5f,3,%d\n", 100 + 50 * r * cos(t), r * sin(t), c
    }
}' >rings.csv
cut -d, -f1-3 rings.csv >rings-nolabel.csv
rows=$(($(wc -l <rings.csv) - 1))

# ---- train ----
"$BIN" train --data rings.csv --label cls --layers 16,16 --act tanh --epochs 40 --lr 1e-2 \
    --standardize --seed 3 --out model.safetensors --json >train.out 2>train.err
rc=$?
last=$(tail -n 1 train.out)
if [ $rc -eq 0 ] && clean train.err; then pass "train exits 0"; else fail "train: rc $rc"; cat train.err; fi
for k in epochs train_loss test_loss test_accuracy seconds; do
    if grep -q "\"$k\":" <<<"$last"; then pass "train --json has $k"; else fail "train --json lacks $k: $last"; fi
done
case $last in "{"*"}") pass "train --json last line is an object" ;; *) fail "train --json: $last" ;; esac
if command -v python3 >/dev/null && python3 -c 'import json,sys; json.loads(sys.argv[1])' "$last" 2>/dev/null; then
    pass "train --json parses"
elif command -v python3 >/dev/null; then fail "train --json does not parse: $last"; fi
acc=$(json_get "$last" test_accuracy)
if ge "$acc" 0.9; then pass "train test accuracy $acc >= 0.9"; else fail "train test accuracy '$acc' < 0.9"; fi
if [ "$(json_get "$last" epochs)" = 40 ]; then pass "train epochs 40"; else fail "train epochs: $last"; fi
if grep -q "epoch 40/40" train.err; then pass "progress on stderr"; else fail "no progress line on stderr"; fi

# the architecture and the scaler travel in the checkpoint's metadata
for k in '"tg_mlp.widths":"3,16,16,2"' '"tg_mlp.act":"tanh"' '"tg_mlp.input":"csv"' \
    '"tg_mlp.label":"cls"' '"tg_mlp.scaler.mean":"' '"tg_mlp.scaler.std":"'; do
    if head -c 4096 model.safetensors | grep -aqF "$k"; then pass "metadata $k"; else fail "metadata lacks $k"; fi
done

# the same seed gives the same model, byte for byte
"$BIN" train --data rings.csv --label cls --layers 16,16 --act tanh --epochs 40 --lr 1e-2 \
    --standardize --seed 3 --out model2.safetensors --quiet >quiet.out 2>&1
if cmp -s model.safetensors model2.safetensors; then pass "same seed, same model file"; else fail "same seed gave a different model file"; fi
if [ ! -s quiet.out ]; then pass "--quiet prints nothing"; else fail "--quiet printed: $(head -3 quiet.out)"; fi

# ---- eval ----
"$BIN" eval --model model.safetensors --data rings.csv --json >eval.out 2>eval.err
rc=$?
last=$(tail -n 1 eval.out)
if [ $rc -eq 0 ] && clean eval.err; then pass "eval exits 0"; else fail "eval: rc $rc"; cat eval.err; fi
for k in test_loss test_accuracy seconds; do
    if grep -q "\"$k\":" <<<"$last"; then pass "eval --json has $k"; else fail "eval --json lacks $k: $last"; fi
done
acc=$(json_get "$last" test_accuracy)
if ge "$acc" 0.9; then pass "eval accuracy $acc >= 0.9"; else fail "eval accuracy '$acc' < 0.9"; fi
if grep -q "recall" eval.out; then pass "eval prints a confusion matrix"; else fail "eval: no confusion matrix"; fi

# ---- predict: without and with the label column ----
"$BIN" predict --model model.safetensors --data rings-nolabel.csv >pred.out 2>pred.err
rc=$?
if [ $rc -eq 0 ] && clean pred.err; then pass "predict exits 0"; else fail "predict: rc $rc"; cat pred.err; fi
if [ "$(wc -l <pred.out)" -eq "$rows" ]; then pass "predict: one line per row"; else fail "predict: $(wc -l <pred.out) lines for $rows rows"; fi
if ! grep -qvE '^[01]$' pred.out; then pass "predict: classes 0 or 1"; else fail "predict: odd output"; fi
right=$(tail -n +2 rings.csv | cut -d, -f4 | paste -d' ' - pred.out | awk '$1 == $2 { n++ } END { print n + 0 }')
if ge "$right" $((rows * 9 / 10)); then pass "predict: $right/$rows right"; else fail "predict: only $right/$rows right"; fi
"$BIN" predict --model model.safetensors --data rings.csv >pred2.out 2>pred2.err
if cmp -s pred.out pred2.out; then pass "predict ignores a label column"; else fail "predict with the label column differs"; cat pred2.err; fi

# ---- softmax regression (no hidden layer) ----
if "$BIN" train --data rings.csv --layers '' --epochs 5 --out soft.safetensors --json --quiet >soft.out 2>&1 &&
    grep -q '"widths":"3,2"' soft.out; then pass "--layers '' trains softmax regression"; else fail "--layers ''"; cat soft.out; fi

# ---- IDX: the tiny fixtures as a train/t10k directory ----
mkdir -p idx
for s in train t10k; do
    cp "$SRC/tests/data/tiny-images-idx3-ubyte.gz" "idx/$s-images-idx3-ubyte.gz"
    cp "$SRC/tests/data/tiny-labels-idx1-ubyte" "idx/$s-labels-idx1-ubyte"
done
if "$BIN" train --data idx --layers 8 --epochs 3 --batch 4 --out idx.safetensors --json >idx.out 2>idx.err &&
    grep -q '"test_accuracy":' idx.out && clean idx.err; then pass "train on an IDX directory"; else fail "train on IDX"; cat idx.err; fi
if "$BIN" eval --model idx.safetensors --data idx --json >idxe.out 2>&1 && grep -q '"samples":6' idxe.out; then pass "eval on an IDX directory"; else fail "eval on IDX"; cat idxe.out; fi
if "$BIN" predict --model idx.safetensors --data idx >idxp.out 2>&1 && [ "$(wc -l <idxp.out)" -eq 6 ]; then pass "predict on an IDX directory"; else fail "predict on IDX dir"; cat idxp.out; fi
if "$BIN" predict --model idx.safetensors --data "$SRC/tests/data/tiny-images-idx3-ubyte" >idxf.out 2>&1 &&
    cmp -s idxp.out idxf.out; then pass "predict on an IDX image file"; else fail "predict on IDX file"; cat idxf.out; fi

# ---- bad arguments and bad inputs: non-zero, a message, no crash ----
printf 'not a model\n' >junk.safetensors
head -c 100 model.safetensors >truncated.safetensors
printf 'a,b,label\n1,2,0\n1,2,0\n3,4,0\n' >oneclass.csv
printf 'x1,x2,const,cls\n1,2,3,0\n1,2,3,7\n' >bigclass.csv
# small safetensors files: one F32 tensor "a" [1], with or without metadata
safetensors() { # safetensors FILE HEADER_JSON
    local len=${#2} lenbytes
    lenbytes=$(printf '\\%03o\\%03o\\0\\0\\0\\0\\0\\0' $((len % 256)) $((len / 256)))
    printf '%b' "$lenbytes" >"$1"
    printf '%s\0\0\0\0' "$2" >>"$1"
}
tensor_a='"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
safetensors plain.safetensors "{$tensor_a}"
safetensors huge.safetensors "{\"__metadata__\":{\"tg_mlp.widths\":\"784,16000000,10\",\"tg_mlp.act\":\"relu\"},$tensor_a}"
safetensors badwidths.safetensors "{\"__metadata__\":{\"tg_mlp.widths\":\"784,-3\",\"tg_mlp.act\":\"relu\"},$tensor_a}"
safetensors names.safetensors "{\"__metadata__\":{\"tg_mlp.widths\":\"1\",\"tg_mlp.act\":\"relu\"},$tensor_a}"
safetensors mismatch.safetensors "{\"__metadata__\":{\"tg_mlp.widths\":\"1,1\",\"tg_mlp.act\":\"relu\"},$tensor_a}"
expect_error() { # expect_error WANT_RC DESCRIPTION -- ARGS...
    local want=$1 what=$2
    shift 3
    "$BIN" "$@" >err.out 2>err.err
    local rc=$?
    if [ $rc -ne 0 ] && { [ "$want" = any ] || [ $rc -eq "$want" ]; } && grep -q "tg-mlp" err.err && clean err.err; then
        pass "$what: exit $rc, $(grep -m1 'tg-mlp' err.err)"
    else
        fail "$what: exit $rc (want $want)"; cat err.err
    fi
}
expect_error 2 "no arguments" --
expect_error 2 "unknown command" -- fit --data rings.csv
expect_error 2 "unknown option" -- train --data rings.csv --bogus 1
expect_error 2 "missing --data" -- train --epochs 2
expect_error 2 "option without a value" -- train --data
expect_error 2 "--epochs 0" -- train --data rings.csv --epochs 0
expect_error 2 "--epochs abc" -- train --data rings.csv --epochs abc
expect_error 2 "--lr -1" -- train --data rings.csv --lr -1
expect_error 2 "--lr nan" -- train --data rings.csv --lr nan
expect_error 2 "--layers 16,x" -- train --data rings.csv --layers 16,x
expect_error 2 "--layers 0" -- train --data rings.csv --layers 0
expect_error 2 "--act softplus" -- train --data rings.csv --act softplus
expect_error 2 "--opt lbfgs" -- train --data rings.csv --opt lbfgs
expect_error 2 "--test-fraction 1" -- train --data rings.csv --test-fraction 1
expect_error 2 "eval without --model" -- eval --data rings.csv
expect_error 2 "--layers on eval" -- eval --model model.safetensors --data rings.csv --layers 3
expect_error 1 "missing CSV file" -- train --data no-such-file.csv --out x.safetensors
expect_error 1 "CSV without feature columns" -- train --data "$SRC/tests/data/bad-number.csv" --out x.safetensors
expect_error 1 "CSV with a short row" -- train --data "$SRC/tests/data/bad-field-count.csv" --out x.safetensors
expect_error 1 "unknown label column" -- train --data rings.csv --label nope --out x.safetensors
expect_error 1 "one class only" -- train --data oneclass.csv --out x.safetensors
expect_error 1 "missing model" -- eval --model no-such.safetensors --data rings.csv
expect_error 1 "model that is not a checkpoint" -- eval --model junk.safetensors --data rings.csv
expect_error 1 "truncated model" -- predict --model truncated.safetensors --data rings.csv
expect_error 1 "a CSV file as the model" -- eval --model rings.csv --data rings.csv
expect_error 1 "model without tg_mlp metadata" -- eval --model plain.safetensors --data rings.csv
expect_error 1 "metadata describing a huge network" -- eval --model huge.safetensors --data rings.csv
expect_error 1 "metadata with a negative width" -- predict --model badwidths.safetensors --data rings.csv
expect_error 1 "metadata with one width" -- predict --model names.safetensors --data rings.csv
expect_error 1 "metadata that does not match the tensors" -- predict --model mismatch.safetensors --data rings.csv
expect_error 1 "data with the wrong width" -- eval --model model.safetensors --data "$SRC/tests/data/iris-tiny.csv" --label species
expect_error 1 "predict on the wrong width" -- predict --model model.safetensors --data "$SRC/tests/data/iris-tiny.csv"
expect_error 1 "a label beyond the model's classes" -- eval --model model.safetensors --data bigclass.csv
expect_error 1 "IDX model on a CSV file for eval" -- eval --model idx.safetensors --data rings.csv
expect_error 1 "unwritable --out" -- train --data rings.csv --epochs 1 --out /nonexistent-dir/m.safetensors
if "$BIN" --help | grep -q "usage:"; then pass "--help"; else fail "--help"; fi

echo
if [ $failures -eq 0 ]; then echo "cli_test: all passed"; else echo "cli_test: $failures FAILED"; fi
[ $failures -eq 0 ]
