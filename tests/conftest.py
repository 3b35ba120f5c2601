"""One intra-op thread for the suite: tests measure behaviour, not speed, and on a shared
2-core machine OpenMP's spinning threads make small models many times slower under load."""
import torch

torch.set_num_threads(1)
