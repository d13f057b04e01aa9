"""One stage per resource kind: depth (DepthBatch), reconstruct (ReconstructionJob)."""
