"""The SpatialForge operator: admits DepthBatch / ReconstructionJob resources under GPU quotas,
runs each as one batch/v1 Job, and follows the Job and its pods into the resource's status.

Kopf watches; one module (`kube.py`) talks to the API; everything else is pure.
"""
