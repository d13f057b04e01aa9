"""SpatialForge: spatial AI (monocular depth, video to 3D) as Kubernetes custom resources."""

__version__ = "0.1.0"
