"""Inputs as they arrive in practice (issue 20 sections 3 and 5): resized photos with their
camera's EXIF, colour profiles, animations, odd orientations, damaged videos, files a header
refuses, and frames that share nothing with the rest of a sequence.

Every file is made here with the libraries that write such files (Pillow's Exif and ImageCms,
OpenCV's video writer); DepthBatch and ReconstructionJob runs use the tiny models.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from spatialforge.runner.errors import InvalidImageError
from spatialforge.runner.geometry.tracking import estimate_poses
from spatialforge.runner.images import decode_image
from spatialforge.runner.synthetic import PinholeCamera, Room, furnished_room, orbit, render, walk, write_video
from spatialforge.runner.video import VideoSource

LIMITS = {"max_pixels": 10**8, "max_bytes": 10**8}
EXIF_IFD, ORIENTATION = 0x8769, 0x0112
FOCAL_LENGTH, FOCAL_35MM, PLANE_X_RES, PLANE_UNIT, PIXEL_X, PIXEL_Y = 0x920A, 0xA405, 0xA20E, 0xA210, 0xA002, 0xA003
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _jpeg(img: Image.Image, exif: Image.Exif | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **({"exif": exif.tobytes()} if exif is not None else {}), **kw)
    return buf.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def camera_photo(width: int = 2000, height: int = 1500, *, focal_mm: float = 4.25, pixel_pitch_um: float = 1.5,
                 pixel_size: bool = True, f35: float | None = None) -> bytes:
    """A photo as a phone writes it: FocalLength and FocalPlaneXResolution (pixels per mm on the
    sensor) for a width x height image; fx = focal_mm * 1000 / pixel_pitch_um pixels."""
    exif = Image.Exif()
    ifd = exif.get_ifd(EXIF_IFD)
    ifd[FOCAL_LENGTH] = focal_mm
    ifd[PLANE_X_RES] = 1000.0 / pixel_pitch_um
    ifd[PLANE_UNIT] = 4  # mm
    if pixel_size:
        ifd[PIXEL_X], ifd[PIXEL_Y] = width, height
    if f35 is not None:
        ifd[FOCAL_35MM] = f35
    return _jpeg(_gradient(width, height), exif)


def resized_keeping_exif(data: bytes, size: tuple[int, int]) -> bytes:
    """What a messenger or a web upload does: a smaller copy with the original's EXIF."""
    original = Image.open(io.BytesIO(data))
    return _jpeg(original.resize(size, Image.Resampling.LANCZOS), original.getexif())


# --- intrinsics (section 3) -----------------------------------------------------------------


def test_a_resized_photo_gets_the_right_focal_length():
    photo = camera_photo()  # 4.25 mm at 1.5 um pitch: 2833 px across 2000 px (70 degrees)
    assert decode_image("full.jpg", photo, **LIMITS).exif_focal_px == pytest.approx(2833.33, rel=1e-3)
    small = decode_image("small.jpg", resized_keeping_exif(photo, (400, 300)), **LIMITS)
    assert (small.width, small.height) == (400, 300)
    assert small.exif_focal_px == pytest.approx(566.67, rel=1e-3) and small.warnings == []
    # 35 mm equivalent is relative to the frame: the same field of view at any size.
    equiv = decode_image("equiv.jpg", resized_keeping_exif(camera_photo(f35=26.0), (400, 300)), **LIMITS)
    assert equiv.exif_focal_px == pytest.approx(26.0 / 36.0 * 400)


def test_exif_that_does_not_fit_the_image_falls_back_with_a_warning():
    # The defect found: a 100 x 100 copy of a phone photo without PixelX/YDimension, fx ~ 7,300 px.
    tiny = decode_image("tiny.jpg", resized_keeping_exif(camera_photo(pixel_size=False, pixel_pitch_um=0.58), (100, 100)),
                        **LIMITS)
    assert tiny.exif_focal_px is None
    [warning] = tiny.warnings
    assert "field of view" in warning and "7328 px" in warning and "default focal length" in warning
    # A square crop of a 4:3 photo: the EXIF describes another image.
    crop = decode_image("crop.jpg", resized_keeping_exif(camera_photo(), (300, 300)), **LIMITS)
    assert crop.exif_focal_px is None and "describes a 2000x1500 image" in crop.warnings[0]
    # A telephoto 35 mm equivalent of 400 mm: 5 degrees, outside the sane range.
    tele = decode_image("tele.jpg", camera_photo(400, 300, f35=400.0), **LIMITS)
    assert tele.exif_focal_px is None and "5.2 degree" in tele.warnings[0]


# --- poses (section 3) ----------------------------------------------------------------------


def test_frames_without_overlap_are_failed_never_guessed():
    """The pose stage alone (no quality gate): a flat frame and a low-contrast pattern, placed
    among the frames of a walk, share nothing with it; dense odometry started from the last
    motion converges on them anyway, which used to pose them ("dense", 0 inliers)."""
    room, cam = furnished_room(), PinholeCamera(width=320, height=240, fx=250, fy=250)
    truth = walk(7, fraction=0.06)  # 0.5 m along the bench's walk
    seen = [render(room, cam, T, supersample=1) for T in truth]
    grey = np.full((240, 320, 3), seen[2][0].mean(axis=(0, 1)).astype(np.uint8))
    yy, xx = np.mgrid[0:240, 0:320]
    pattern = np.clip(grey + 6 * (np.sin(xx / 9.0) * np.cos(yy / 13.0))[..., None], 0, 255).astype(np.uint8)
    frames = seen[:3] + [(grey, seen[2][1].copy())] + seen[3:5] + [(pattern, seen[4][1].copy())] + seen[5:]
    result, _ = estimate_poses([f[0] for f in frames], [f[1] for f in frames], cam.K, depth_max=10.0)
    alien = {3, 6}
    for i in alien:
        assert result.poses[i] is None and result.methods[i] == "failed", (i, result.methods[i], result.inliers[i])
    posed = [i for i in range(len(frames)) if i not in alien]
    assert result.posed == posed
    for i, T_true in zip(posed, truth, strict=True):
        assert result.inliers[i] >= 20 or i == 0
        expected = np.linalg.inv(truth[0]) @ T_true
        assert np.linalg.norm(result.poses[i][:3, 3] - expected[:3, 3]) < 0.01, i


# --- cheap refusals, stable reasons (section 5) ----------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, followed by a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b"")


def _gif() -> bytes:
    buf = io.BytesIO()
    _gradient(16, 16).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "data", "words"), [
    ("huge.png", _png_header_only(40_000, 40_000), "is more than maxImagePixels"),
    ("anim.png", _gif(), "format GIF is not one of"),
])
def test_a_header_refusal_comes_before_the_model_loads(name, data, words, tmp_path, make_manifest, monkeypatch,
                                                        runner_env):
    _gradient(64, 48).save(tmp_path / "good.png")
    (tmp_path / name).write_bytes(data)
    # No weights at all: had the model been loaded first, this would be a ModelLoadError (exit 1).
    monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(tmp_path / "no-models"))
    spec = {"inputs": ["file://good.png", f"file://{name}"], "output": {"uri": "file://out"}}
    started = time.monotonic()
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    seconds = time.monotonic() - started
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert outcome.reason.startswith("InvalidImageError") and words in outcome.reason and name in outcome.reason
    assert seconds < 2.0, seconds
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_long_header_is_read_further_before_the_model_loads(tmp_path, make_manifest, monkeypatch):
    """200 KB of APP2 segments (an ICC profile Pillow splits up) before the JPEG's frame header:
    past the first read, refused from the second, still before the model loads."""
    (tmp_path / "long.jpg").write_bytes(_jpeg(_gradient(64, 48), icc_profile=bytes(200_000)))
    monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(tmp_path / "no-models"))
    spec = {"inputs": ["file://long.jpg"], "output": {"uri": "file://out"}, "maxImagePixels": 1000}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert "64x48 = 3072 pixels is more than maxImagePixels 1000" in outcome.reason


def test_a_corrupt_file_gets_a_stable_reason(tmp_path, model_dir, make_manifest):
    garbage = b"\xff\xd8\xff\xe0 not really a JPEG " * 40
    with pytest.raises(InvalidImageError) as err:
        decode_image("broken.jpg", garbage, **LIMITS)
    assert "broken.jpg" in err.value.reason and not ADDRESS.search(err.value.reason), err.value.reason
    truncated = _jpeg(_gradient(640, 480))[:5000]  # a header that parses, data that ends early
    with pytest.raises(InvalidImageError) as err:
        decode_image("cut.jpg", truncated, **LIMITS)
    assert "cut.jpg" in err.value.reason and not ADDRESS.search(err.value.reason), err.value.reason
    (tmp_path / "broken.jpg").write_bytes(garbage)
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://broken.jpg"], "output": {"uri": "file://out"}}),
                        show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "broken.jpg" in outcome.reason and "cannot decode" in outcome.reason and not ADDRESS.search(outcome.reason)


# --- colour, animation, orientation (section 5) ----------------------------------------------


def swapped_primaries_profile() -> bytes:
    """A real ICC profile: LittleCMS's sRGB with the red and green colorants exchanged, so a
    value stored as red means sRGB green (and the reverse); white and greys stay put."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack_from(">I", data, 128)[0]
    table = {struct.unpack_from(">4s", data, 132 + 12 * i)[0]: i for i in range(count)}
    r, g = 132 + 12 * table[b"rXYZ"], 132 + 12 * table[b"gXYZ"]
    r_entry, g_entry = data[r + 4 : r + 12], data[g + 4 : g + 12]
    data[r + 4 : r + 12], data[g + 4 : g + 12] = g_entry, r_entry
    return bytes(data)


def _patches() -> np.ndarray:
    img = np.zeros((16, 48, 3), np.uint8)
    img[:, :16], img[:, 16:32], img[:, 32:] = (200, 0, 0), (0, 200, 0), (128, 128, 128)
    return img


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_colour_profiles_are_converted_to_srgb(fmt):
    buf = io.BytesIO()
    Image.fromarray(_patches()).save(buf, format=fmt, icc_profile=swapped_primaries_profile(),
                                     **({} if fmt in ("PNG", "TIFF") else {"quality": 100}))
    decoded = decode_image(f"p.{fmt.lower()}", buf.getvalue(), **LIMITS)
    red, green, grey = (decoded.rgb[8, x].astype(int) for x in (8, 24, 40))
    assert np.abs(red - (0, 200, 0)).max() <= 3, red  # stored red is the profile's green
    assert np.abs(green - (200, 0, 0)).max() <= 3, green
    assert np.abs(grey - 128).max() <= 2, grey
    assert decoded.color_profile and decoded.warnings == []
    # Without the profile the same bytes are taken as sRGB, as stored.
    buf = io.BytesIO()
    Image.fromarray(_patches()).save(buf, format="PNG")
    plain = decode_image("plain.png", buf.getvalue(), **LIMITS)
    assert plain.color_profile is None and plain.rgb[8, 8].tolist() == [200, 0, 0]


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_animated_images_say_only_the_first_frame_was_used(fmt):
    frames = [Image.fromarray(np.full((24, 32, 3), (40 * i, 20, 200 - 40 * i), np.uint8)) for i in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = decode_image(f"anim.{fmt.lower()}", buf.getvalue(), **LIMITS)
    assert decoded.warnings == ["animated image (4 frames): only the first frame was used"]
    assert np.abs(decoded.rgb[12, 16].astype(int) - (0, 20, 200)).max() <= 2


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_an_orientation_outside_1_to_8_is_taken_as_1(value):
    exif = Image.Exif()
    exif[ORIENTATION] = value
    stored = _gradient(40, 20)
    decoded = decode_image("o.jpg", _jpeg(stored, exif), **LIMITS)
    assert decoded.orientation == 1 and (decoded.width, decoded.height) == (40, 20)
    assert decoded.warnings == [f"EXIF orientation {value} is not one of 1-8: taken as 1 (the image as stored)"]


def test_the_depth_manifest_records_what_decoding_did(tmp_path, model_dir, make_manifest):
    """One DepthBatch over the cases above: each image's record says what happened to it."""
    (tmp_path / "resized.jpg").write_bytes(resized_keeping_exif(camera_photo(), (400, 300)))
    (tmp_path / "tiny.jpg").write_bytes(resized_keeping_exif(camera_photo(pixel_size=False), (100, 100)))
    Image.fromarray(_patches()).save(tmp_path / "p3.png", icc_profile=swapped_primaries_profile())
    frames = [_gradient(32, 24), _gradient(24, 32).resize((32, 24))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[ORIENTATION] = 9
    (tmp_path / "odd.jpg").write_bytes(_jpeg(_gradient(40, 20), exif))
    names = ["resized.jpg", "tiny.jpg", "p3.png", "anim.webp", "odd.jpg"]
    spec = {"inputs": [f"file://{n}" for n in names], "output": {"uri": "file://out"}}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    manifest = json.loads((tmp_path / "out" / "team-a" / "job" / "shard-00000" / "manifest.json").read_text())
    rec = {Path(r["input"]).name: r for r in manifest["images"]}
    assert sorted(rec) == sorted(names)
    k = rec["resized.jpg"]["intrinsics"]
    assert k["source"] == "exif" and k["fx"] == pytest.approx(566.67, rel=1e-3) and rec["resized.jpg"]["warnings"] == []
    tiny = rec["tiny.jpg"]
    assert tiny["intrinsics"]["source"] == "heuristic" and tiny["intrinsics"]["fx"] == pytest.approx(90.0)
    assert "field of view" in tiny["warnings"][0]
    fov = math.degrees(2 * math.atan(50 / tiny["intrinsics"]["fx"]))
    assert 20 < fov < 120
    assert rec["p3.png"]["colorProfile"] and rec["resized.jpg"]["colorProfile"] is None
    assert rec["anim.webp"]["warnings"] == ["animated image (2 frames): only the first frame was used"]
    assert rec["odd.jpg"]["exifOrientation"] == 1 and "EXIF orientation 9" in rec["odd.jpg"]["warnings"][0]


# --- damaged video (section 5) ---------------------------------------------------------------


def _damaged_video(path: Path, frames: list[np.ndarray], fourcc: str) -> Path:
    write_video(path, frames, fps=10, fourcc=fourcc)
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * 0.4), int(len(data) * 0.6)
    data[a:b] = np.random.default_rng(3).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _walk_frames(n: int) -> list[np.ndarray]:
    cam = PinholeCamera(width=320, height=240, fx=250, fy=250)
    return [render(Room(), cam, T, supersample=1)[0] for T in orbit(n, step=0.015, yaw_step=0.6)]


@pytest.mark.parametrize(("ext", "fourcc"), [("mp4", "mp4v"), ("avi", "MJPG")])
def test_a_damaged_video_counts_the_frames_it_lost(ext, fourcc, tmp_path):
    frames = _walk_frames(30)
    path = _damaged_video(tmp_path / f"v.{ext}", frames, fourcc)
    source = VideoSource(path, name=f"v.{ext}", max_side=320)
    got = [f for f in source.frames(lambda i: True)]
    decoded = sum(f.rgb is not None for f in got)
    assert source.frame_count == 30
    assert source.lost >= 1 and decoded + source.lost == 30, (decoded, source.lost)
    assert source.warnings == [f"v.{ext}: {source.lost} of 30 frames could not be decoded (damaged video); the others were used"]
    # Only every third frame wanted: the frames lost in between still count.
    sparse = VideoSource(path, name=f"v.{ext}", max_side=320)
    list(sparse.frames(lambda i: i % 3 == 0))
    assert sparse.lost == source.lost
    # An intact video loses nothing.
    intact = VideoSource(write_video(tmp_path / f"ok.{ext}", frames, fps=10, fourcc=fourcc), name="ok", max_side=320)
    assert sum(f.rgb is not None for f in intact.frames(lambda i: True)) == 30 and intact.lost == 0
    assert intact.warnings == []


def test_the_reconstruction_manifest_says_how_many_frames_were_lost(tmp_path, model_dir, make_manifest):
    path = _damaged_video(tmp_path / "v.mp4", _walk_frames(30), "mp4v")
    spec = {"input": path.as_uri(), "output": {"uri": (tmp_path / "out").as_uri(), "formats": ["trajectory"]},
            "quality": "draft", "depthMax": 50.0, "intrinsics": {"fx": 250.0, "fy": 250.0}}
    outcome = run_local(make_manifest("ReconstructionJob", spec, name="clip"), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    manifest = json.loads((tmp_path / "out" / "team-a" / "clip" / "shard-00000" / "manifest.json").read_text())
    lost = manifest["frames"]["lost"]
    assert lost >= 1 and manifest["frames"]["total"] == 30
    assert any(f"{lost} of 30 frames could not be decoded" in w for w in manifest["warnings"])


def test_header_refusal_on_s3_reads_only_the_head(s3, tmp_path, make_manifest, monkeypatch):
    """On MinIO: the store's read_head is a ranged GET (the first bytes, not the object), and
    a DepthBatch refuses a huge image from it before the model loads."""
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.storage.s3 import S3Settings, S3Store

    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    huge = _png_header_only(40_000, 40_000) + bytes(3 << 20)  # 3 MB behind the header
    store.put(f"s3://{s3}/in/huge.png", huge)
    assert store.read_head(f"s3://{s3}/in/huge.png", 1000) == huge[:1000]
    monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(tmp_path / "no-models"))
    spec = {"inputs": [f"s3://{s3}/in/"], "output": {"uri": f"s3://{s3}/out"}}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert "maxImagePixels" in outcome.reason and "huge.png" in outcome.reason


def test_an_image_sequence_says_each_kind_of_warning_once():
    """A ReconstructionJob over a prefix of photos: one line per kind of problem, not one per frame."""
    from spatialforge.runner.video import ImageSequenceSource

    unfit = resized_keeping_exif(camera_photo(pixel_size=False), (160, 120))
    objects = {f"f{i}.jpg": unfit for i in range(3)} | {"f3.jpg": b"\xff\xd8 broken " * 20}
    source = ImageSequenceSource(sorted(objects), objects.__getitem__, max_side=160)
    frames = list(source.frames(lambda i: True))
    assert [f.rgb is None for f in frames] == [False, False, False, True]
    assert source.lost == 1 and source.metadata_focal_px is None
    first, broken = source.warnings
    assert first.startswith("f0.jpg: EXIF focal length not used") and first.endswith("(and 2 more images)")
    assert broken.startswith("f3.jpg: not decoded (InvalidImageError: f3.jpg: cannot decode image")
