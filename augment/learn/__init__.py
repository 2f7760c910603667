"""Learning the class tokens: the batched learner, its checkpoint, its memory model and fp16 loss scaling."""
