"""The pool client's pure parts: which EndpointSlice addresses are used, and in what order."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from kubernetes_asyncio.client import (
    DiscoveryV1EndpointPort,
    V1Endpoint,
    V1EndpointConditions,
    V1EndpointSlice,
)

from spatialforge.apiserver.services.pool import DepthPools, PoolRef, ready_endpoints


def _slice(port_name: str, *endpoints: tuple[str, bool | None, bool | None], port: int = 8080) -> V1EndpointSlice:
    return V1EndpointSlice(address_type="IPv4", ports=[DiscoveryV1EndpointPort(name=port_name, port=port)],
                           endpoints=[V1Endpoint(addresses=[a], conditions=V1EndpointConditions(ready=r, terminating=t))
                                      for a, r, t in endpoints])


def test_only_ready_not_terminating_addresses_on_the_http_port() -> None:
    slices = [_slice("http", ("198.18.0.1", True, None), ("198.18.0.2", False, None), ("198.18.0.3", None, None),
                     ("198.18.0.4", True, True)),
              _slice("metrics", ("198.18.0.5", True, None)),
              _slice("http", ("fd00::1", True, False), port=9000)]
    assert ready_endpoints(slices) == ["http://198.18.0.1:8080", "http://198.18.0.3:8080", "http://[fd00::1]:9000"]


def test_pool_ref_parse() -> None:
    assert PoolRef.parse(" spatialforge-system/default ") == PoolRef("spatialforge-system", "default")
    for bad in ("default", "/x", "ns/"):
        with pytest.raises(ValueError):
            PoolRef.parse(bad)


def test_fewest_in_flight_first_ties_in_turn() -> None:
    pools = DepthPools.__new__(DepthPools)  # only the ordering state; no API client needed
    pools._in_flight, pools._turn = Counter(), itertools.count()
    urls = ["http://a", "http://b", "http://c"]
    firsts = [pools._order(urls)[0] for _ in range(3)]
    assert sorted(firsts) == urls  # ties rotate
    pools._in_flight.update({"http://a": 2, "http://b": 1})
    assert pools._order(urls)[0] == "http://c" and pools._order(urls)[-1] == "http://a"
