#!/usr/bin/env bash
# Toy world: tokens learned with and without feature reuse in the learner's no-grad chain (issue 36), at the
# sd14-cub preset's grad_steps 2 (the toy preset's grad_steps 10 leaves no chain to cache), interval 3: 5 of the
# 10 calls run the whole UNet instead of 10. Each set generated without caching and scored the same way, so the
# tokens alone differ. R: where runs go (default runs); SEEDS: learner seeds (default 0).
set -e
cd "$(dirname "$0")/.."
R=${R:-runs}
A=.venv/bin/augment
L=manifests/fashion-mnist.txt
for seed in ${SEEDS:-0}; do for n in 1 3; do
  o=$R/learn-gs2-s$seed-c$n
  printf "learn:\n  grad_steps: 2\n  cache_interval: %s\n  seed: %s\n" $n $seed > $o.yaml
  [ -d $o/tokens ] && [ -f $o/_info.json ] || {
    /usr/bin/time -f "learn seed $seed interval $n: %e s" $A learn --preset toy --labels $L --config $o.yaml --out $o --no-progress
    $A generate --preset toy --labels $L --tokens $o --out $o --cache-interval 1 --no-progress
  }
  [ -f $o.score.json ] || $A score --shards $o --preset toy --reference fashion-mnist --reference-limit 2000 --out $o.score.json --no-progress > $o.score.txt
  python3 -c "import json; d=json.load(open('$o.score.json')); m=json.load(open('$o/manifest.json'))['workers']['learn']['0of1']['unet_evaluations']; print('seed $seed interval $n: held-out top-1', d['macro']['top1'], 'FID', round(d['fid'], 2), 'class-steps', m['class_steps_done'], 'rows', m['done'], 'shallow', m['shallow_done'])"
done; done
