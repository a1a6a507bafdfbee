"""export.py --triton_repo: a Triton model repository whose config.pbtxt parses with Triton's own
protobuf schema (tritonclient's model_config_pb2) and agrees with the ONNX file it serves."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import export as export_entry
from src.models import build_model

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

CLASSES = ["cat", "dog", "fox"]
SIZE = 32


def parse_config(folder: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)  # raises on anything off-schema
    return config


def onnx_io(path: Path) -> tuple[list, list]:
    model = onnx.load(str(path), load_external_data=False)

    def shape(value):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

    return ([(v.name, v.type.tensor_type.elem_type, shape(v)) for v in model.graph.input],
            [(v.name, v.type.tensor_type.elem_type, shape(v)) for v in model.graph.output])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=len(CLASSES)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "b0.pth"
    torch.save({"model": model.state_dict(), "model_name": "efficientnet_b0", "classes": CLASSES,
                "preprocess": {"resize": SIZE, "crop": SIZE, "interpolation": "bilinear",
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}, path)
    return path


def test_dynamic_batch_repository_parses_and_matches_the_onnx_file(checkpoint, tmp_path, capsys):
    repo = tmp_path / "models"
    code = export_entry.main(["--checkpoint_path", str(checkpoint), "--file_name", str(tmp_path / "b0"),
                              "--no_op_counts", "--triton_repo", str(repo), "--triton_max_batch", "32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = repo / "b0"
    assert f"triton model repository: {folder}/" in out
    config = parse_config(folder)
    assert (config.name, config.platform, config.max_batch_size) == ("b0", "onnxruntime_onnx", 32)
    inputs, outputs = onnx_io(folder / "1" / "model.onnx")
    assert inputs == [("input", onnx.TensorProto.FLOAT, [-1, 3, SIZE, SIZE])]
    assert outputs == [("logits", onnx.TensorProto.FLOAT, [-1, len(CLASSES)])]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == \
        [("input", "TYPE_FP32", [3, SIZE, SIZE])]  # per-sample dims: Triton adds the batch axis
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims), t.label_filename)
            for t in config.output] == [("logits", "TYPE_FP32", [len(CLASSES)], "labels.txt")]
    assert (folder / "labels.txt").read_text().splitlines() == CLASSES
    assert config.HasField("dynamic_batching")
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == \
        [(1, "KIND_AUTO")]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "b0.onnx").read_bytes()


def test_fixed_batch_and_tensorrt(checkpoint, tmp_path, capsys):
    repo = tmp_path / "models"
    code = export_entry.main(["--checkpoint_path", str(checkpoint), "--file_name", str(tmp_path / "b0fixed"),
                              "--no_op_counts", "--batch_size", "4", "--triton_repo", str(repo), "--trt"])
    assert code == 0, capsys.readouterr().err
    config = parse_config(repo / "b0fixed")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4, 3, SIZE, SIZE]  # no batching by Triton: the full shape
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"


def test_trt_without_a_repository_is_one_error_line(checkpoint, tmp_path, capsys):
    code = export_entry.main(["--checkpoint_path", str(checkpoint), "--file_name", str(tmp_path / "x"), "--trt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--triton_repo" in err
    assert not (tmp_path / "x.onnx").exists()
