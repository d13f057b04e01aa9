"""Garbage-collector tuning shared by the operator and the front end: both hold many
long-lived objects and serve an event loop that a full collection would stall."""

from __future__ import annotations

import gc

# Young collections every 50,000 allocations net of frees (CPython's default is 700). Older
# generations still run every 20 young and every 400 young collections, so cyclic garbage that
# reached them is not kept for the life of the process (an operator once ran 50 and 1,000:
# "never" for a long-lived server; a malformed-body error cycle grew the front end by 900 MB).
THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Move what start-up loaded out of the collector's reach (gc.freeze) and make young
    collections rarer.

    Measured with gc.callbacks: with CPython's defaults, a full collection over the operator's
    cache (thousands of dicts at 2,000 resources) paused its loop 100-300 ms every second or so
    under a steady event stream, and one over the front end's ~200,000 start-up objects
    (kubernetes_asyncio models, botocore service data, pydantic, Stripe) held its loop for up
    to a second in the middle of a burst of creates.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
