#!/usr/bin/env bash
# Toy world: held-out top-1 and FID of generated sets at cache intervals 1 (off), 2, 3, 5, two seeds.
set -e
cd "$(dirname "$0")/.."
R=runs
A=.venv/bin/augment
L=manifests/fashion-mnist.txt
[ -d $R/toy/tokens ] || { /usr/bin/time -f "learn %e s" $A learn --preset toy --labels $L --out $R/toy --no-progress; }
for seed in 0 1; do for n in 1 2 3 5; do
  o=$R/gen-s$seed-c$n
  [ -f $o/_info.json ] || /usr/bin/time -f "gen seed $seed interval $n: %e s" $A generate --preset toy --labels $L --tokens $R/toy --seed $seed --cache-interval $n --out $o --no-progress
  [ -f $o.score.json ] || $A score --shards $o --preset toy --reference fashion-mnist --reference-limit 2000 --out $o.score.json --no-progress > $o.score.txt
done; done
echo ALL DONE
