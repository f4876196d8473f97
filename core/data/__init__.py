"""Data: finding data sets and patients, patient-grouped splits, the one image path, augmentation, the input pipeline and the frozen-feature cache."""
