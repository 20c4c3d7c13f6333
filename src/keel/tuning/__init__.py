"""Feedback -> fine-tune loop: corrections become LoRA adapters that serve only when an
evaluation gate says they are better than the model they would replace."""
