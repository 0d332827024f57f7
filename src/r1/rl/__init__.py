"""Reinforcement learning: GRPO as pure tensor functions (grpo.py) and its training loop (trainer.py)."""
