"""Stand-ins for your data and your models, so that every command of docs/your-data.md runs as written
before your own are ready: Fashion-MNIST scenes (small canvases of clothing items, with boxes and masks)
written in the three layouts prunefx reads, a small YOLO-style detector saved as a captured program, and a
Python file whose `build()` returns a small segmenter.

How-to: docs/your-data.md. Run it:

    .venv/bin/python examples/your_data_samples.py --data ~/data --models .

It writes DATA/coco (COCO JSON), DATA/parts/data.yaml (YOLO txt), DATA/roads (image and mask folders),
MODELS/detector.pt2 (input 16x3x640x640: a saved program has fixed shapes, so `compress` runs it at
`--batch-size 16`) and MODELS/segmenter.py. Needs the Fashion-MNIST files
(`make setup` installs them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

import prunefx
from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import SceneConfig, make_scenes
from prunefx.data.scene_files import write_scenes

LAYOUTS = {"coco": "coco", "parts": "yolo", "roads": "masks"}  # folder under DATA -> layout
SEGMENTER = '''"""A small segmenter: 10 Fashion-MNIST classes and the background, one score map per class."""
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 11, 1))
'''


class Detector(nn.Module):
    """The YOLOv8 export layout prunefx decodes: per anchor (x, y, w, h) in pixels, then one probability
    per class. One anchor per cell of a stride-16 grid, so a 640 x 640 input has 1600 of them."""

    def __init__(self, size: int = 640, classes: int = 10, stride: int = 16):
        super().__init__()
        self.stride = stride
        # wide enough that half the MACs is a plan on the runtime's width multiple (16 and 32 channels were not)
        self.body = nn.Sequential(nn.Conv2d(3, 64, 3, stride=4, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 128, 3, stride=4, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                                  nn.Conv2d(128, 4 + classes, 1))
        side = size // stride
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.register_buffer("centres", (torch.stack([xs, ys]).flatten(1).float() + 0.5) * stride)

    def forward(self, x):
        raw = self.body(x).flatten(2)
        centre = self.centres + self.stride * torch.tanh(raw[:, :2])
        size = 4 * self.stride * torch.sigmoid(raw[:, 2:4])
        return torch.cat([centre, size, torch.sigmoid(raw[:, 4:])], 1)


def write_data(root: Path, counts: dict[str, int], size: int) -> dict[str, str]:
    items, classes = fashion_mnist.load_fashion_mnist("test")
    config = SceneConfig(size=size)
    scenes = {split: make_scenes(items, classes, count, split=split, config=config, seed=0)
              for split, count in counts.items()}
    for folder, layout in LAYOUTS.items():
        write_scenes(scenes, root / folder, layout)
        print(f"wrote {root / folder} ({layout})")
    return {str(root / folder): layout for folder, layout in LAYOUTS.items()}


def write_models(folder: Path, image_size: int, batch: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    detector = Detector(image_size).eval()
    prunefx.capture(detector, torch.rand(batch, 3, image_size, image_size), name="detector").save(folder / "detector.pt2")
    (folder / "segmenter.py").write_text(SEGMENTER)
    print(f"wrote {folder / 'detector.pt2'} and {folder / 'segmenter.py'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder for the three data sets")
    parser.add_argument("--models", type=Path, required=True, help="folder for detector.pt2 and segmenter.py")
    parser.add_argument("--train", type=int, default=32, help="training images per data set")
    parser.add_argument("--val", type=int, default=16, help="validation images per data set")
    parser.add_argument("--canvas", type=int, default=64, help="side of a scene image in pixels")
    parser.add_argument("--image-size", type=int, default=640, help="the detector's input side")
    parser.add_argument("--batch", type=int, default=16, help="the batch size the detector is captured at")
    args = parser.parse_args(argv)
    written = write_data(args.data.expanduser(), {"train": args.train, "val": args.val}, args.canvas)
    write_models(args.models.expanduser(), args.image_size, args.batch)
    return {"data": written, "models": str(args.models.expanduser())}


if __name__ == "__main__":
    main()
