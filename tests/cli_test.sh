#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
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
    grep -q '"widths":\[3,2\]' soft.out; then pass "--layers '' trains softmax regression"; else fail "--layers ''"; cat soft.out; fi

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

# ---- the option parser: short and long forms, --version, per-command help ----
if "$BIN" --version | grep -qE '^tg-mlp [0-9]+\.[0-9]+\.[0-9]+ \(tapegrad '; then pass "--version"; else fail "--version: $("$BIN" --version)"; fi
for c in train eval predict plot; do
    if "$BIN" $c --help | grep -q "usage: tg-mlp $c"; then pass "$c --help"; else fail "$c --help"; fi
done
if "$BIN" train --help | grep -q -- "--val-split"; then pass "train --help lists --val-split"; else fail "train --help"; fi
"$BIN" train -d rings.csv -L cls -l 8 -a tanh -e 2 -b 32 -O momentum -r 0.05 -s 2 -j 1 -q -o short.safetensors
"$BIN" train --data=rings.csv --label cls --layers=8 --act tanh --epochs 2 --batch=32 --opt momentum \
    --lr 0.05 --seed 2 --threads 1 --quiet --out long.safetensors
if cmp -s short.safetensors long.safetensors; then pass "short and long options give the same model"; else fail "short and long options differ"; fi
expect_message() { # expect_message WANT_RC MESSAGE -- ARGS...
    local want=$1 msg=$2
    shift 3
    "$BIN" "$@" >msg.out 2>msg.err
    local rc=$?
    if [ $rc -eq "$want" ] && grep -qF -- "$msg" msg.err && clean msg.err; then
        pass "exit $rc: $msg"
    else
        fail "want exit $want and '$msg', got exit $rc: $(cat msg.err)"
    fi
}
expect_message 2 "unknown option '--epohcs' (did you mean --epochs?)" -- train -d rings.csv --epohcs 3
expect_message 2 "unknown option '--vall-split' (did you mean --val-split?)" -- train -d rings.csv --vall-split 0.2
expect_message 2 "unknown option '--bogus' for train" -- train -d rings.csv --bogus
expect_message 2 "option --lr needs a value" -- train -d rings.csv --lr
expect_message 2 "option -e needs a value" -- train -d rings.csv -e
expect_message 2 "--layers is not an option of eval" -- eval -m model.safetensors -d rings.csv --layers 3
expect_message 2 "--proba is not an option of train" -- train -d rings.csv --proba
expect_message 2 "unexpected argument 'extra'" -- train -d rings.csv extra
expect_message 2 "--train: a command comes first" -- --train
expect_message 2 "--delimiter: 'ab' is not one character (or 'tab')" -- train -d rings.csv -t ab
expect_message 2 "--weight-decay: '-1' is not a number >= 0" -- train -d rings.csv --weight-decay -1
expect_message 2 "--threads: '0' is not 1 to 1024" -- train -d rings.csv -j 0
expect_message 2 "--batch: '0' is not an integer from 1 to" -- train -d rings.csv -b 0
expect_message 2 "--seed: 'x' is not an integer from 0 to 2147483647" -- train -d rings.csv -s x
"$BIN" train -d rings.csv -L cls -l 8 -e 2 -O adamw --weight-decay 0.5 --test-fraction 0.5 -q -o wd.safetensors --json >wd.out
if [ "$(json_get "$(tail -n 1 wd.out)" test_samples)" = 200 ] && ! cmp -s wd.safetensors short.safetensors; then
    pass "--opt adamw --weight-decay --test-fraction 0.5"; else fail "--weight-decay/--test-fraction: $(cat wd.out)"; fi
expect_message 2 "--val-split: '1.5' is not a number in (0, 1)" -- train -d rings.csv --val-split 1.5
expect_message 2 "--patience: '0' is not an integer from 1 to 1000000" -- train -d rings.csv --val-split 0.2 --patience 0
expect_message 2 "--patience needs --val-split" -- train -d rings.csv --patience 3
expect_message 2 "--schedule: 'linear' is not constant, cosine, step or exponential" -- train -d rings.csv --schedule linear
expect_message 2 "--warmup: '-1' is not a number of steps >= 0" -- train -d rings.csv --warmup -1
expect_message 2 "--clip: '0' is not a positive number" -- train -d rings.csv --clip 0
expect_message 2 "--log: empty path" -- train -d rings.csv --log ''
expect_message 2 "--resume: empty path" -- train -d rings.csv --resume ''
expect_message 2 "plot needs --out FILE.svg" -- plot train.log
expect_message 2 "plot takes one LOG file (got 2)" -- plot a.log b.log -o x.svg

# ---- every path is checked before any work ----
start=$(date +%s%N)
expect_message 1 "--out /nonexistent-dir/m.safetensors: the folder /nonexistent-dir does not exist" -- \
    train -d rings.csv -e 1000 --out /nonexistent-dir/m.safetensors
if [ $((($(date +%s%N) - start) / 1000000)) -lt 3000 ] && ! grep -q "epoch" msg.err; then pass "--out checked before training"; else fail "--out checked late"; fi
expect_message 1 "--log /nonexistent-dir/log.csv: the folder /nonexistent-dir does not exist" -- train -d rings.csv --log /nonexistent-dir/log.csv
expect_message 1 "--data no-such.csv: No such file or directory" -- train -d no-such.csv
expect_message 1 "--model no-such.safetensors: No such file or directory" -- predict -m no-such.safetensors -d rings.csv
expect_message 1 "--resume no-such.safetensors: No such file or directory" -- train -d rings.csv --resume no-such.safetensors
cp long.safetensors lone.safetensors
expect_message 1 "--resume state lone.safetensors.resume: No such file" -- train -d rings.csv --resume lone.safetensors
expect_message 1 "log no-such.log: No such file or directory" -- plot no-such.log -o x.svg
expect_message 1 "--out /nonexistent-dir/x.svg: the folder /nonexistent-dir does not exist" -- plot rings.csv -o /nonexistent-dir/x.svg

# ---- --delimiter and class names ----
awk 'BEGIN { srand(5); print "len;width;species"; split("setosa versicolor virginica", n, " ");
    for (i = 0; i < 150; i++) { c = i % 3; printf "%.3f;%.3f;%s\n", 1 + 2 * c + rand(), 3 - c + rand(), n[c + 1] } }' >flowers.csv
cut -d';' -f1-2 flowers.csv >flowers-nolabel.csv
expect_message 1 "try --delimiter ';'" -- train -d flowers.csv
if "$BIN" train -d flowers.csv -t ';' -L species -l 8 -e 30 -r 0.02 -q -o flowers.safetensors --json >fl.out 2>fl.err &&
    ge "$(json_get "$(tail -n 1 fl.out)" test_accuracy)" 0.8; then pass "--delimiter ';' and class names train"; else fail "class names: $(cat fl.err fl.out)"; fi
if head -c 4096 flowers.safetensors | grep -aqF '"tg_mlp.classes":"setosa\nversicolor\nvirginica"'; then pass "class names in the metadata"; else fail "no tg_mlp.classes"; fi
"$BIN" predict -m flowers.safetensors -d flowers-nolabel.csv -t ';' >fp.out 2>fp.err
if [ "$(sort -u fp.out | tr '\n' ' ')" = "setosa versicolor virginica " ]; then pass "predict prints class names"; else fail "predict names: $(sort -u fp.out | head) $(cat fp.err)"; fi
"$BIN" predict -m flowers.safetensors -d flowers.csv -t ';' >fp2.out 2>&1
if cmp -s fp.out fp2.out; then pass "predict with the name column"; else fail "predict with the name column: $(head -3 fp2.out)"; fi
if "$BIN" eval -m flowers.safetensors -d flowers.csv -t ';' | grep -q "class 0: setosa, class 1: versicolor, class 2: virginica"; then pass "eval names the classes"; else fail "eval names"; fi
printf 'len;width;species\n1;2;rose\n' >rose.csv
expect_message 1 "the label 'rose' is not one of the model's classes" -- eval -m flowers.safetensors -d rose.csv -t ';'

# ---- predict --proba ----
"$BIN" predict -m flowers.safetensors -d flowers-nolabel.csv -t ';' --proba >pp.out
if awk -F, 'NF != 3 { bad = 1 } { s = $1 + $2 + $3; if (s < 0.9999 || s > 1.0001) bad = 1 } END { exit bad || NR != 150 }' pp.out; then
    pass "--proba: 3 probabilities summing to 1 per row"; else fail "--proba: $(head -2 pp.out)"; fi

# ---- --val-split, --schedule, --warmup, --clip, --log ----
"$BIN" train -d rings.csv -L cls -l 8 -e 6 --val-split 0.25 --schedule cosine --warmup 10 --clip 1 \
    --log log.csv -q -o sched.safetensors --json >sched.out
last=$(tail -n 1 sched.out)
if [ "$(json_get "$last" val_loss)" != null ] && [ -n "$(json_get "$last" val_loss)" ]; then pass "--val-split: a validation loss"; else fail "--val-split: $last"; fi
if [ "$(head -1 log.csv)" = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,test_loss,test_accuracy,lr,seconds" ] &&
    [ "$(wc -l <log.csv)" -eq 7 ]; then pass "--log: a CSV header and 6 lines"; else fail "--log: $(cat log.csv)"; fi
lr1=$(sed -n 2p log.csv | cut -d, -f8) lr6=$(sed -n 7p log.csv | cut -d, -f8)
if awk -v a="$lr1" -v b="$lr6" 'BEGIN { exit !(a < 0.001 && b < 0.0001) }'; then pass "--warmup then --schedule cosine: lr $lr1 -> $lr6"; else fail "schedule: lr $lr1 -> $lr6"; fi
"$BIN" train -d rings.csv -L cls -l 8 -e 3 --log log.jsonl -q -o j.safetensors
if [ "$(wc -l <log.jsonl)" -eq 3 ] && python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' log.jsonl; then pass "--log *.jsonl: JSON lines"; else fail "--log jsonl: $(cat log.jsonl)"; fi
"$BIN" train -d rings.csv -L cls -l 8 -e 3 --clip 1e-9 -q -o c1.safetensors
"$BIN" train -d rings.csv -L cls -l 8 -e 3 -q -o c2.safetensors
if ! cmp -s c1.safetensors c2.safetensors; then pass "--clip changes the training"; else fail "--clip had no effect"; fi

# ---- --patience keeps the best checkpoint ----
"$BIN" train -d rings.csv -L cls -l 16 -e 60 -r 0.05 --val-split 0.3 --patience 3 --log pat.csv -q -o best.safetensors 2>pat.err
best_epoch=$(tail -n +2 pat.csv | sort -t, -k4 -g | head -1 | cut -d, -f1)
saved=$(head -c 4096 best.safetensors | grep -ao '"tg_mlp.epochs":"[0-9]*"' | grep -o '[0-9]*')
if [ -n "$saved" ] && [ "$saved" = "$best_epoch" ]; then pass "--patience: the saved model is epoch $saved, the best validation loss"; else fail "--patience: saved $saved, best $best_epoch"; fi
if [ "$(($(wc -l <pat.csv) - 1))" -lt 60 ] && [ "$(($(wc -l <pat.csv) - 1))" -le $((best_epoch + 3)) ]; then pass "--patience stopped early after epoch $(($(wc -l <pat.csv) - 1))"; else fail "--patience did not stop: $(wc -l <pat.csv)"; fi

# ---- --resume: stopped after epoch 3 and resumed ends bit-identical ----
"$BIN" train -d rings.csv -L cls -l 8 -e 6 -q -o full.safetensors --log full.csv
"$BIN" train -d rings.csv -L cls -l 8 -e 3 -q -o part.safetensors --log part.csv
"$BIN" train -d rings.csv -L cls -l 8 -e 6 -q -o part.safetensors --log part.csv --resume part.safetensors
if cmp -s full.safetensors part.safetensors; then pass "--resume: bit-identical to the uninterrupted run"; else fail "--resume differs"; fi
if diff <(cut -d, -f1-8 full.csv) <(cut -d, -f1-8 part.csv) >/dev/null; then pass "--resume: the log continues"; else fail "--resume log"; fi
"$BIN" train -d rings.csv -L cls -l 8 -e 2 -q -o two.safetensors
cp full.safetensors.resume two.safetensors.resume
expect_message 1 "two.safetensors is from epoch 2 but two.safetensors.resume from epoch 6" -- \
    train -d rings.csv -L cls -l 8 -e 9 -q -o x.safetensors --resume two.safetensors
expect_message 2 "has done 6 epochs already" -- train -d rings.csv -L cls -l 8 -e 6 -q -o x.safetensors --resume part.safetensors
expect_message 1 "the file has shape" -- train -d rings.csv -L cls -l 4 -e 9 -q -o x.safetensors --resume part.safetensors

# ---- plot ----
if "$BIN" plot log.csv -o curves.svg >plot.out && grep -q '<svg' curves.svg && [ "$(grep -c '<polyline' curves.svg)" -eq 6 ]; then
    pass "plot: an SVG with train, validation and test loss and accuracy"; else fail "plot: $(cat plot.out)"; fi
if "$BIN" plot log.jsonl -o curves2.svg >/dev/null && grep -q '<polyline' curves2.svg; then pass "plot reads JSON lines"; else fail "plot jsonl"; fi
expect_message 1 "rings.csv:1: not a line of a tg-mlp --log" -- plot rings.csv -o x.svg
if command -v rsvg-convert >/dev/null; then
    if rsvg-convert -o curves.png curves.svg && [ -s curves.png ]; then pass "the SVG renders (rsvg-convert)"; else fail "rsvg-convert"; fi
fi

echo
if [ $failures -eq 0 ]; then echo "cli_test: all passed"; else echo "cli_test: $failures FAILED"; fi
[ $failures -eq 0 ]
