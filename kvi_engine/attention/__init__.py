"""Prefix attention over [injected bank capsules ‖ own KV]: the op, its float32 oracle and SDPA path, and the fused
C++ (CPU) and Triton (GPU) backends, behind one dispatch point."""
