"""Rollout engines: sample G completions per prompt and return one typed batch."""
