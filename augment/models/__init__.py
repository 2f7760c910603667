"""The models: the generator (a Stable Diffusion pipeline), the guide classifier, classifier checkpoints, prompts and token embeddings."""
