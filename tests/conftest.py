"""Suite-wide settings."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker (and per subprocess a test starts): the workers already use every core, and
    # oversubscribed threads make the small tensors of these tests slower, not faster.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
