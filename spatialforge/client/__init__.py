"""Python client of the SpatialForge REST API.

Usage::

    from spatialforge.client import Client

    with Client("https://api.example.com", api_key="sf_live_...") as sf:
        prefix = sf.upload(["a.jpg", "b.jpg"])
        job = sf.submit_depth({"inputs": [prefix], "output": {"uri": sf.results_prefix()}})
        job = sf.wait(job["id"], on_progress=print)
        sf.download(job["id"], "out/")
"""

from spatialforge.client._client import ApiError, Client, verify_webhook

__all__ = ["ApiError", "Client", "verify_webhook"]
