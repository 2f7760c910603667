#!/usr/bin/env bash
# Toy world, issue 35's next measurement: research/lora_grid.sh's grid plus the two LoRA rows with the adapter at
# lr 1e-3 (research/lora-lr1e-3.yaml), in the same OUT (the existing cells are reused). R: where runs go; TRIALS.
cd "$(dirname "$0")/.."
C=research/lora-lr1e-3.yaml
EXTRA="--synthetic lora3=lora:toy+$C --synthetic both3=lora+learn:toy+$C" exec research/lora_grid.sh
