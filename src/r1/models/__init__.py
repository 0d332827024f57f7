"""Tokenizer and policy builders: tiny models from configs, saved in Hugging Face format."""
