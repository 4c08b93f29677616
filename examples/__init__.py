"""The discdiff training example: data, tokenizers, configs, training loop, evaluation, demo.

Nothing in ``discdiff/`` imports from here; everything here is ordinary user code built on the
library's public API. ``python -m examples.demo`` runs the whole pipeline on CPU.
"""
