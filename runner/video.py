"""Frame sources for reconstruction: a video file (OpenCV) or a prefix of images.

Both count what they lose (`lost`: frames the container lists, or images, that could not be
decoded) and collect what decoding had to guess (`warnings`, image sequences: an EXIF focal
length unfit for the image, an animated frame, a bad EXIF orientation) for the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spatialforge.runner.errors import InvalidImageError, InvalidVideoError
from spatialforge.runner.images import decode_image

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".m4v", ".mkv", ".avi")
MAX_GAP = 300  # undecodable frames in a row after which a video is taken to have ended
MAX_WARNINGS = 20  # per source: a long image sequence with one problem says it a few times, not 1,000


@dataclass(kw_only=True)
class Frame:
    """A decoded frame at the working size; `rgb` is None for a frame that could not be decoded."""

    index: int
    timestamp: float
    rgb: np.ndarray | None


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down so the longer side is at most max_side (never up)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(rgb: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    w, h = fit_size(rgb.shape[1], rgb.shape[0], max_side)
    if (w, h) == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


class VideoSource:
    """Decodes a local video file; `frames(wants)` grabs every frame, retrieves only wanted ones."""

    def __init__(self, path: Path, *, name: str, max_side: int) -> None:
        import cv2

        self.name = name
        self.path = path
        self.max_side = max_side
        if not path.is_file() or path.stat().st_size == 0:
            raise InvalidVideoError(f"{name}: empty or missing video file")
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise InvalidVideoError(f"{name}: cannot open video (unsupported or corrupt container)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0
        self.frame_count = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.full_size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.metadata_focal_px: float | None = None
        self.lost = 0
        self.warnings: list[str] = []

    def reopen(self) -> VideoSource:
        """The same video from its start (`frames` reads it once)."""
        return VideoSource(self.path, name=self.name, max_side=self.max_side)

    def frames(self, wants: Callable[[int], bool]) -> Iterator[Frame]:
        """Wanted frames in order; a damaged stretch yields frames with `rgb` None and decoding
        goes on after it (up to the container's frame count, or MAX_GAP failures in a row).

        `lost` counts every frame the container lists that could not be decoded, wanted or not:
        the failures inside the frame count, and the frames left when the stream ended early.
        """
        import cv2

        index = decoded = failures = 0
        self.lost = 0
        try:
            while True:
                ok = self.cap.grab()
                if not ok:
                    failures += 1
                    if index >= self.frame_count or failures > MAX_GAP:
                        break
                    self.lost += 1
                    if wants(index):
                        yield Frame(index=index, timestamp=index / self.fps, rgb=None)
                    index += 1
                    continue
                failures = 0
                if wants(index):
                    ok, bgr = self.cap.retrieve()
                    if ok and bgr is not None and bgr.size:
                        decoded += 1
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                        yield Frame(index=index, timestamp=index / self.fps, rgb=_resize(rgb, self.max_side))
                    else:
                        self.lost += 1
                        yield Frame(index=index, timestamp=index / self.fps, rgb=None)
                else:
                    decoded += 1
                index += 1
            self.lost += max(0, self.frame_count - index)  # the stream ended before its frame count
        finally:
            self.cap.release()
        if self.lost:
            self.warnings.append(
                f"{self.name}: {self.lost} of {max(self.frame_count, index)} frames could not be decoded "
                "(damaged video); the others were used"
            )
        if decoded == 0:
            raise InvalidVideoError(f"{self.name}: no frame of the video could be decoded")


class ImageSequenceSource:
    """Frames from image objects, in name order; focal length from the first frame's EXIF."""

    def __init__(self, uris: list[str], fetch: Callable[[str], bytes], *, max_side: int, fps: float = 10.0) -> None:
        self.uris = uris
        self.fetch = fetch
        self.max_side = max_side
        self.fps = fps
        self.frame_count = len(uris)
        self.metadata_focal_px: float | None = None
        self.full_size: tuple[int, int] | None = None
        self.name = uris[0] if uris else ""
        self.lost = 0
        self._said: dict[str, list[str]] = {}  # message -> the images it was said of

    def _warn(self, uri: str, message: str) -> None:
        self._said.setdefault(message, []).append(uri)

    @property
    def warnings(self) -> list[str]:
        """One line per distinct message, naming the first image and how many more it concerns."""
        out = []
        for message, uris in list(self._said.items())[:MAX_WARNINGS]:
            more = f" (and {len(uris) - 1} more images)" if len(uris) > 1 else ""
            out.append(f"{uris[0]}: {message}{more}")
        if len(self._said) > MAX_WARNINGS:
            out.append(f"{len(self._said) - MAX_WARNINGS} more kinds of warning left out")
        return out

    def reopen(self) -> ImageSequenceSource:
        """The same images, fetched again, with fresh counts and warnings."""
        return ImageSequenceSource(self.uris, self.fetch, max_side=self.max_side, fps=self.fps)

    def frames(self, wants: Callable[[int], bool]) -> Iterator[Frame]:
        for index, uri in enumerate(self.uris):
            if not wants(index):
                continue
            try:
                img = decode_image(uri, self.fetch(uri), max_pixels=200_000_000, max_bytes=1 << 30)
            except InvalidImageError as exc:
                self.lost += 1
                self._warn(uri, f"not decoded ({exc.reason})")
                yield Frame(index=index, timestamp=index / self.fps, rgb=None)
                continue
            for message in img.warnings:
                self._warn(uri, message)
            if self.full_size is None:
                self.full_size = (img.width, img.height)
            if index == 0 or self.metadata_focal_px is None:
                if img.exif_focal_px:
                    # EXIF focal is for the full-size frame: rescale to the working size below.
                    w, _ = fit_size(img.width, img.height, self.max_side)
                    self.metadata_focal_px = img.exif_focal_px * w / img.width
            yield Frame(index=index, timestamp=index / self.fps, rgb=_resize(img.rgb, self.max_side))
