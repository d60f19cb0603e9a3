"""YOLOv5 model definitions: building blocks (common), the detection model (yolo), architecture YAMLs."""
