"""Data curation with trained models: filtering pairs by image-text similarity (Open-Qwen2VL)."""
