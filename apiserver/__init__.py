"""SpatialForge REST front end: API keys, plans, quotas, Stripe billing, jobs as custom resources.

It never runs models. Each accepted request becomes a DepthBatch or ReconstructionJob in the
tenant's namespace; status is read back from a watch-backed cache. See docs/apiserver.md.
"""
