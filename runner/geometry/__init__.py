"""Geometry for reconstruction: cameras, keyframes, poses, fusion (numpy / OpenCV / open3d)."""
