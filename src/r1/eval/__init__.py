"""Evaluation: the R1 protocol (pass@1 averaged over k samples at T=0.6, top-p 0.95)."""
