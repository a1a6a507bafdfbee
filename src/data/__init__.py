"""Training and eval data: image folders, CIFAR and the source factory (dataset.py), WebDataset
shards (shards.py), augmentation and the eval transform (transforms.py), deterministic resumable
samplers (sampler.py) and mixup / CutMix (mixup.py).

May import src.common, src.runtime and infer (the layers below); never src.models (same layer),
src.config or the job packages.
"""
