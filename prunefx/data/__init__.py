"""Data sets: classification folders, COCO, YOLO and mask folders, Fashion-MNIST and its scenes, calibration images, and the batch loaders."""
