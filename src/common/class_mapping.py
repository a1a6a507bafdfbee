"""Which model output each class of a labelled data set is: one rule for eval.py and the ONNX runner.

A labelled folder names its classes (its class folders; CIFAR's and the shards' class lists). A
model may store its class names (train.py checkpoints: the training folders; export.py files:
those, or ImageNet's category words). The rule, in order:

1. The model has names and every data class is one of them: labels follow the names, so a val
   folder holding a subset of the classes, or named in another order, is scored correctly.
2. The model has names, no data class is one of them, and there are exactly as many data classes
   as model classes: the same classes under another naming (ImageNet's WordNet-id folders against
   the category words stored for torchvision's weights). Data class i (sorted, as in training) is
   model class i, and a note says so.
3. The model has names otherwise (some match and some do not, or none match with another count):
   the wrong data for this model, an error naming the first data class that does not match. A
   guess by position would be wrong for a subset, so none is made.
4. The model has no names: data class i is model class i (sorted, as in training); more data
   classes than model outputs is an error. Outputs no data class names are called ``class_<i>``.

No torch here: the runner in infer/ imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from src.common.preprocess import DatasetError

SHOWN_CLASSES = 5  # model class names quoted in an error message


@dataclass(frozen=True)
class ClassMapping:
    """``model_index[i]``: the model output of the data set's i-th class; ``names``: one name per model
    output, in output order; ``note``: a line for the user when labels follow the sorted order although
    the model has names of its own (rule 2), else None."""

    model_index: list[int]
    names: list[str]
    note: str | None = None


def output_names(model_classes: Sequence[str] | None, num_outputs: int, known: Sequence[str] = ()) -> list[str]:
    """The model's names, else ``known`` names for the first outputs and ``class_<i>`` for the rest."""
    if model_classes is not None:
        return [str(name) for name in model_classes]
    return [str(name) for name in known[:num_outputs]] + [f"class_{i}" for i in range(len(known), num_outputs)]


def map_classes(data_classes: Sequence[str], model_classes: Sequence[str] | None, num_outputs: int,
                where: str, word: str = "class folder", words: str = "class folders",
                owner: str = "model") -> ClassMapping:
    """Map a labelled data set's classes (sorted, as listed) to model outputs by the module's rule.

    ``where`` names the data for messages, ``word``/``words`` what one class of it is ("class folder",
    "cifar10 class"), ``owner`` what holds the names ("checkpoint" in eval.py, "model" in the runner).
    Raises DatasetError with a one-line message (rules 3 and 4).
    """
    data = [str(name) for name in data_classes]
    if model_classes is None:
        if len(data) > num_outputs:
            raise DatasetError(f"{where} has {len(data)} {words} but the model has only {num_outputs} classes; "
                               "point --dataset_path at the matching data")
        return ClassMapping(list(range(len(data))), output_names(None, num_outputs, data))
    names = output_names(model_classes, num_outputs)
    position = {name: i for i, name in enumerate(names)}
    unknown = [name for name in data if name not in position]
    if not unknown:
        return ClassMapping([position[name] for name in data], names)
    if len(unknown) == len(data) == len(names):
        return ClassMapping(list(range(len(data))), names,
                            f"note: no {word} of {where} is named like the {owner}'s classes (e.g. WordNet ids "
                            f"against category names); labels are the {words}' sorted order, as in training")
    shown = ", ".join(names[:SHOWN_CLASSES]) + (", ..." if len(names) > SHOWN_CLASSES else "")
    raise DatasetError(f"{word} {unknown[0]!r} in {where} is not one of the {owner}'s {len(names)} classes "
                       f"({shown})" + (f"; {len(unknown)} {words} do not match" if len(unknown) > 1 else ""))
