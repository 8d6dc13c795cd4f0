"""`eldefect bench`'s serving sections (end to end, peers, memory, scaling), load generator."""
