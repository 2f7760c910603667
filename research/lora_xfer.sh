#!/usr/bin/env bash
# Issue 35, a candidate for the combination: the k-shot tokens learned on the plain generator (the grid's learn:
# row), generated with on the lr-1e-3 adapter of the same (shots, trial) (--lora; augment warns that the tokens
# were learned without it). Sets in $R/xfer/k<shots>-t<trial>, scored like the grid's; research/lora_why.py
# trains on them as the row kshot@lora3. R: where research/lora_grid_lr.sh ran (an absolute path).
set -e
cd "$(dirname "$0")/.."
R=${R:-runs}
G=$R/fewshot-lora/learned
for k in ${SHOTS:-0003 0009}; do for t in 0 1 2; do
  tok=$(ls -d $G/kshot/k$k-t$t-*/run 2>/dev/null) || continue
  lora=$(ls -d $G/_lora/k$k-t$t-857a58c0 2>/dev/null) || continue  # the lr-1e-3 adapter (lora_table.py lists them)
  out=$R/xfer/k$k-t$t
  [ -f $out/_info.json ] || .venv/bin/augment generate --preset toy --labels manifests/fashion-mnist.txt \
    --tokens $tok --lora $lora --out $out --no-progress
  [ -f $out.score.json ] || .venv/bin/augment score --shards $out --preset toy --reference fashion-mnist \
    --reference-limit 2000 --out $out.score.json --no-progress > /dev/null
done; done
