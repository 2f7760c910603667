#!/usr/bin/env bash
# Issue 35: what research/lora_why.py reads beyond the LoRA grid's own output, for each (shots, trial):
# - the k-shot tokens learned on the plain generator (the grid's learn: row) generated with on the lr-1e-3 adapter
#   of the same (shots, trial) (--lora; augment notes that the tokens were learned without it): $R/xfer/k<k>-t<t>,
#   scored like the grid's sets; lora_why.py trains on it as the row kshot@lora3;
# - every learned set scored by its trial's k-shot guide (the classifier trained on the same shots that learned
#   the k-shot tokens): RUN.guide-score.json beside each RUN; lora_why.py's routed set reads them.
# R: where research/lora_grid_lr.sh ran. SHOTS: zero-padded shot counts (default 0003 0009).
set -e
cd "$(dirname "$0")/.."
R=${R:-runs}
G=$R/fewshot-lora/learned
A=.venv/bin/augment
for k in ${SHOTS:-0003 0009}; do for t in 0 1 2; do
  tok=$(ls -d $G/kshot/k$k-t$t-*/run 2>/dev/null) || continue
  for row in kshot both both3 lora lora3; do
    run=$(ls -d $G/$row/k$k-t$t-*/run 2>/dev/null) || continue
    [ -f $run.guide-score.json ] || $A score --shards $run --classifier ckpt:$(dirname $tok)/guide \
      --out $run.guide-score.json --no-progress > /dev/null
  done
  lora=$(ls -d $G/_lora/k$k-t$t-857a58c0 2>/dev/null) || continue  # the lr-1e-3 adapter (lora_table.py lists them)
  out=$R/xfer/k$k-t$t
  [ -f $out/_info.json ] || $A generate --preset toy --labels manifests/fashion-mnist.txt --tokens $tok \
    --lora $lora --out $out --no-progress
  [ -f $out.score.json ] || $A score --shards $out --preset toy --reference fashion-mnist --reference-limit 2000 \
    --out $out.score.json --no-progress > /dev/null
done; done
