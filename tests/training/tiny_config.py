"""The smallest training recipe the training tests share: 12 mm voxels, 16³ patches, a 2-level net."""

TINY = [
    "data.spacing=[12.0, 12.0, 12.0]",
    "data.patch_size=[16, 16, 16]",
    "data.patches_per_volume=2",
    "model.channels=[4, 8]",
    "model.strides=[2]",
    "model.dropout=0.1",
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.val_every=1",
    "train.log_every=1",
    "train.lr=0.003",
    "infer.overlap=0.25",
]
