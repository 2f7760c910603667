#!/usr/bin/env bash
# Issue 35: every learned set of the LoRA grid scored by its trial's k-shot guide (the classifier trained on the
# same k shots that learned the k-shot tokens): RUN.guide-score.json beside each RUN. research/lora_why.py's
# routed set reads them; docs/toy-world.md compares them with the held-out classifier's scores. R: as lora_grid.sh.
set -e
cd "$(dirname "$0")/.."
R=${R:-runs}
G=$R/fewshot-lora/learned
for k in ${SHOTS:-0003 0009}; do for t in 0 1 2; do
  guide=$(ls -d $G/kshot/k$k-t$t-*/guide 2>/dev/null) || continue
  for row in kshot both both3 lora lora3; do
    run=$(ls -d $G/$row/k$k-t$t-*/run 2>/dev/null) || continue
    [ -f $run.guide-score.json ] || .venv/bin/augment score --shards $run --classifier ckpt:$guide \
      --out $run.guide-score.json --no-progress > /dev/null
  done
done; done
