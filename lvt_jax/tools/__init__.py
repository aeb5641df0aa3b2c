"""Command-line tools (``python -m lvt_jax.tools.<name>``).

* :mod:`lvt_jax.tools.import_reference` -- converts checkpoints of the reference
  PyTorch release (``rakhimovv/lvt``) into this project's orbax checkpoints.
"""
