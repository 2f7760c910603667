#!/usr/bin/env bash
# Toy world: the few-shot grid with the LoRA routes (issue 35): real, + plain, + tokens (full guide), + k-shot
# tokens, + LoRA on the shots (DataDream's route), + LoRA + k-shot tokens; 3 and 9 shots, 3 trials. Then the
# held-out top-1 and FID of every set the grid made. R: where runs go (default runs). EXTRA: more --synthetic rows
# (research/lora_grid_lr.sh adds the adapter at lr 1e-3). SHOTS: the shot counts (default 3,9).
set -e
cd "$(dirname "$0")/.."
R=${R:-runs}
A=.venv/bin/augment
L=manifests/fashion-mnist.txt
[ -d $R/toy/tokens ] || $A learn --preset toy --labels $L --out $R/toy --no-progress
[ -f $R/toy/_info.json ] || $A generate --preset toy --labels $L --tokens $R/toy --out $R/toy --no-progress
[ -f $R/toy-plain/_info.json ] || $A generate --preset toy --labels $L --no-tokens --out $R/toy-plain --no-progress
/usr/bin/time -v .venv/bin/downstream fewshot --dataset fashion-mnist --labels $L --synthetic plain=$R/toy-plain \
  --synthetic tokens=$R/toy --synthetic kshot=learn:toy --synthetic lora=lora:toy --synthetic both=lora+learn:toy \
  ${EXTRA:-} --shots ${SHOTS:-3,9} --trials ${TRIALS:-3} --steps 300 --out $R/fewshot-lora --no-progress
for run in $R/toy-plain $R/toy $R/fewshot-lora/learned/*/k*/run; do
  [ -f $run.score.json ] || $A score --shards $run --preset toy --reference fashion-mnist --reference-limit 2000 \
    --out $run.score.json --no-progress > /dev/null
done
echo ALL DONE
