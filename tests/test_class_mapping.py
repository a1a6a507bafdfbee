"""src/common/class_mapping.py: the one rule eval.py and the ONNX runner use to map data classes to model outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.common.class_mapping import ClassMapping, map_classes, output_names
from src.common.preprocess import DatasetError

REPO = Path(__file__).resolve().parents[1]
MODEL = ["zebra", "apple", "mango"]  # output order is not alphabetical


def test_names_match_in_any_order_and_a_subset_is_fine():
    assert map_classes(["apple", "mango", "zebra"], MODEL, 3, "val") == ClassMapping([1, 2, 0], MODEL)
    assert map_classes(["mango", "zebra"], MODEL, 3, "val") == ClassMapping([2, 0], MODEL)
    assert map_classes([], MODEL, 3, "shards") == ClassMapping([], MODEL)  # shards without class names


def test_other_names_for_all_classes_follow_the_sorted_order_with_a_note():
    mapping = map_classes(["n01", "n02", "n03"], MODEL, 3, "val")
    assert mapping.model_index == [0, 1, 2] and mapping.names == MODEL
    assert mapping.note == ("note: no class folder of val is named like the model's classes (e.g. WordNet ids "
                            "against category names); labels are the class folders' sorted order, as in training")


@pytest.mark.parametrize("data, message", [
    (["apple", "kiwi"], "class folder 'kiwi' in val is not one of the model's 3 classes (zebra, apple, mango)"),
    (["a", "b"], "class folder 'a' in val is not one of the model's 3 classes (zebra, apple, mango); "
                 "2 class folders do not match"),  # none match but fewer: position would be a guess
    (["a", "b", "c", "d"], "class folder 'a' in val is not one of the model's 3 classes (zebra, apple, mango); "
                           "4 class folders do not match"),
])
def test_names_that_do_not_fit_are_one_error(data, message):
    with pytest.raises(DatasetError) as info:
        map_classes(data, MODEL, 3, "val")
    assert str(info.value) == message


def test_error_words_and_long_class_lists():
    many = [f"c{i}" for i in range(7)]
    with pytest.raises(DatasetError) as info:
        map_classes(["c1", "x"], many, 7, "data (cifar10 test batch)", "cifar10 class", "cifar10 classes",
                    "checkpoint")
    assert str(info.value) == ("cifar10 class 'x' in data (cifar10 test batch) is not one of the checkpoint's "
                               "7 classes (c0, c1, c2, c3, c4, ...)")


def test_without_model_names_the_sorted_index_is_the_class():
    assert map_classes(["b", "a"], None, 4, "val") == ClassMapping([0, 1], ["b", "a", "class_2", "class_3"])
    assert map_classes(["a", "b", "c"], None, 3, "val") == ClassMapping([0, 1, 2], ["a", "b", "c"])
    with pytest.raises(DatasetError) as info:
        map_classes(["a", "b", "c"], None, 2, "val")
    assert str(info.value) == ("val has 3 class folders but the model has only 2 classes; point --dataset_path "
                               "at the matching data")


def test_output_names():
    assert output_names(MODEL, 3) == MODEL
    assert output_names(None, 3) == ["class_0", "class_1", "class_2"]
    assert output_names(None, 3, ["a"]) == ["a", "class_1", "class_2"]


def test_the_modules_infer_shares_need_no_torch():
    probe = "import sys; sys.modules['torch'] = None\nimport src.common.class_mapping, src.common.errors"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
