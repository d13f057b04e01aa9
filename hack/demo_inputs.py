"""Render demo inputs (images and a short walk-through video of a synthetic room) and
upload them to a bucket, or write them to a folder. Used by hack/demo.sh (through
hack/demo_submit.py, which sends them through the REST API) and the end-to-end tests.

    python hack/demo_inputs.py s3://BUCKET [--images N] [--frames N]
    python hack/demo_inputs.py DIR [--images N] [--frames N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import boto3
import cv2

from spatialforge.runner.synthetic import PinholeCamera, Room, orbit, render, write_video


def s3_client():  # noqa: ANN201
    return boto3.client("s3", endpoint_url=os.environ["SPATIALFORGE_S3_ENDPOINT"],
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def render_inputs(folder: Path, images: int, frames: int) -> tuple[list[Path], Path]:
    """`images` JPEG views and a `frames`-frame MP4 orbit of a synthetic room, written to `folder`."""
    if images < 1 or frames < 2:
        raise SystemExit(f"need at least 1 image and 2 frames, got --images {images} --frames {frames}")
    folder.mkdir(parents=True, exist_ok=True)
    room, camera = Room(), PinholeCamera(width=320, height=240, fx=250.0, fy=250.0)
    poses = orbit(max(images, frames))
    rgb_frames = [render(room, camera, pose, supersample=1)[0] for pose in poses[:max(images, frames)]]
    paths = []
    for i, rgb in enumerate(rgb_frames[:images]):
        path = folder / f"view-{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths, write_video(folder / "walkthrough.mp4", rgb_frames[:frames], fps=10.0)


def upload(bucket: str, images: int, frames: int) -> None:
    s3 = s3_client()
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        paths, video = render_inputs(Path(tmp), images, frames)
        for path in paths:
            s3.upload_file(str(path), bucket, f"inputs/images/{path.name}")
        s3.upload_file(str(video), bucket, "inputs/walkthrough.mp4")
    print(f"uploaded {len(paths)} images and a {frames}-frame video to s3://{bucket}/inputs/")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="s3://bucket, or a local folder")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    a = p.parse_args()
    if a.target.startswith("s3://"):
        upload(a.target.removeprefix("s3://").strip("/"), a.images, a.frames)
    else:
        written, walk = render_inputs(Path(a.target), a.images, a.frames)
        print(f"wrote {len(written)} images and {walk} ({a.frames} frames)")
