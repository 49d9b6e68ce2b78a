"""Triton GPU kernels, installed as ``kvi_engine.kernels``.

Importing this package never requires a GPU or Triton; each kernel module imports Triton lazily and the
dispatch point in :mod:`kvi_engine.dispatch` decides whether a kernel can run.
"""
