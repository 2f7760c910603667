"""Adapting the generator to real images: LoRA on the shots (augment.adapt.lora)."""
