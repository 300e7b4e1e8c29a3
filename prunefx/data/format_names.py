"""The layouts of a data set on disk, by the name `--data-format` takes (formats.py reads each): torch-free, so
that `prunefx compress` makes its flag without importing the readers."""

IMAGEFOLDER, COCO, YOLO, MASKS, UNLABELLED = "imagefolder", "coco", "yolo", "masks", "images"
FORMATS = (IMAGEFOLDER, COCO, YOLO, MASKS, UNLABELLED)
