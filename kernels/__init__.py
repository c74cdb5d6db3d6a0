"""Triton kernels (GPU; run on CPU tensors under TRITON_INTERPRET=1 in the tests).

Installed as ``pytransfer.kernels``. Import a submodule only when its op runs on the triton
backend, so that importing pytransfer never imports triton.
"""
