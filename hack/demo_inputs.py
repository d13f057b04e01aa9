"""Render demo inputs (images and a short walk-through video of a synthetic room) and
upload them to the demo bucket. Used by hack/demo.sh and the end-to-end tests.

    python hack/demo_inputs.py s3://BUCKET [--images N] [--frames N]
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


def main(bucket: str, images: int, frames: int) -> None:
    s3 = s3_client()
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    room, camera = Room(), PinholeCamera(width=320, height=240, fx=250.0, fy=250.0)
    poses = orbit(max(images, frames))
    with tempfile.TemporaryDirectory() as tmp:
        rgb_frames = [render(room, camera, pose, supersample=1)[0] for pose in poses[:frames]]
        for i, rgb in enumerate(rgb_frames[:images]):
            path = Path(tmp) / f"view-{i:03d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            s3.upload_file(str(path), bucket, f"inputs/images/{path.name}")
        video = write_video(Path(tmp) / "walkthrough.mp4", rgb_frames, fps=10.0)
        s3.upload_file(str(video), bucket, "inputs/walkthrough.mp4")
    print(f"uploaded {min(images, frames)} images and a {frames}-frame video to s3://{bucket}/inputs/")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bucket", help="s3://bucket")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    a = p.parse_args()
    main(a.bucket.removeprefix("s3://").strip("/"), a.images, a.frames)
