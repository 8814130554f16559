"""Model surgery: swap linear layers for structured kinds, from scratch or by projection."""
