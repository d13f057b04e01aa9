"""A development node agent: simulated GPU nodes for the local control plane.

There is no kubelet (nor Docker) on development and CI machines, so this agent registers
nodes that advertise `nvidia.com/gpu`, keeps them Ready, and plays the kubelet for pods
bound to them: it either simulates the container (sleep, then an exit code) or runs the
pod's command as a real local process with the pod's env and service-account token.
What each pod does is decided by `behaviour.py`.

The package is also the dev and test tooling the tests and the benches share: `plane.py` (the
local control plane), `operator_process.py` (the operator as a subprocess), `ports.py`
(`free_port`). Product code (runner, operator, apiserver, crds, client) never imports it
(.importlinter).
"""
