"""Models: the backbones (builders, preprocessing, pretrained weights, the offline EfficientNet-Lite conversion), the classifier and its export."""
