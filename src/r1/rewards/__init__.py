"""Pure reward functions: ``(completion, ...) -> float``; no model, no trainer."""
