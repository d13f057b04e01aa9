"""Pinhole intrinsics and where they come from (spec, metadata, heuristic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spatialforge.crds.v1alpha1.common import Intrinsics


@dataclass(frozen=True, kw_only=True)
class Camera:
    """Pinhole camera in pixels for an image of width x height."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    source: str = "spec"

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the conventional name
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for a resized image.

        Pixel centres sit at integer coordinates (OpenCV), so the image edge is at -0.5 and
        a coordinate scales as (c + 0.5) * s - 0.5: 319.5 at 640 px is 255.5 at 512 px.
        """
        sx, sy = width / self.width, height / self.height
        return Camera(
            fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
            width=width, height=height, source=self.source,
        )

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
            "width": self.width, "height": self.height, "source": self.source,
        }


def resolve_camera(
    width: int, height: int, *, spec: Intrinsics | None = None, metadata_focal_px: float | None = None
) -> Camera:
    """Spec intrinsics, else a focal length from metadata (EXIF), else 0.9 x max(w, h)."""
    if spec is not None:
        return Camera(
            fx=spec.fx, fy=spec.fy,
            cx=spec.cx if spec.cx is not None else width / 2, cy=spec.cy if spec.cy is not None else height / 2,
            width=width, height=height, source="spec",
        )
    if metadata_focal_px:
        f = float(metadata_focal_px)
        return Camera(fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height, source="metadata")
    f = 0.9 * max(width, height)
    return Camera(fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height, source="heuristic")
