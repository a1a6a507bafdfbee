"""benchmark.py: every mode runs at tiny sizes and writes the JSON the README tables come from.

No timing assertions (the machine is shared); the tests check the structure and the values that
do not depend on speed: which rows exist, how many images were processed, that each reported
ratio is computed from the reported per-round measurements, pixel and logit agreement where the
implementations must agree.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark
from bench import data as data_mode
from bench.finetune import scaled_epochs
from bench.finetune_sets import SetSpec, check_set, parse_set, training_root
from bench.memory import add_savings
from bench.plain_finetune import plain_finetune
from infer.quantize import compare_accuracy
from src.common.errors import InputError
from src.common.preprocess import list_class_folders
from src.config import load_config
from src.export.graph import op_counts
from src.training.finetune import apply_finetune_defaults, recipe_for
from tests.helpers_data import make_image_folder

FLOWERS = Path(__file__).parent / "data" / "flowers17"  # 6 labelled classes x 4 photos

def run_mode(tmp_path, argv: list[str]) -> dict:
    out = tmp_path / f"{argv[0]}.json"
    assert benchmark.main(argv + ["--json", str(out)]) == 0
    return json.loads(out.read_text())


def rows(payload: dict, **match) -> list[dict]:
    return [r for r in payload["results"] if all(r[k] == v for k, v in match.items())]


def test_generated_jpegs_are_cached_deterministic_and_photo_like(tmp_path):
    kind = data_mode.JpegKind("phone", 160, 120, 92, 30, 8.0, 4, True)
    first = data_mode.generate_jpegs(tmp_path / "a", kind, 2)
    again = data_mode.generate_jpegs(tmp_path / "a", kind, 2)
    other = data_mode.generate_jpegs(tmp_path / "b", kind, 2)
    assert first == again and [p.name for p in first] == ["0000.jpg", "0001.jpg"]
    assert [p.stat().st_mtime_ns for p in first] == [p.stat().st_mtime_ns for p in again]  # not rewritten
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in other]   # same seed, same bytes
    assert first[0].read_bytes() != first[1].read_bytes()
    with Image.open(first[0]) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (160, 120), "RGB")
        assert img.getexif()[data_mode.EXIF_ORIENTATION_TAG] == 1
        pixels = np.asarray(img, dtype=np.float64)
    assert pixels.std() > 20   # content, not a flat colour
    assert not list((tmp_path / "a").rglob("*.tmp"))


def test_data_mode_rows_counts_and_pixel_agreement(tmp_path):
    p = run_mode(tmp_path, ["data", "--num_images", "4", "--imagenet_size", "96x72", "--phone_size", "320x240",
                            "--image_size", "32", "--rounds", "1", "--data_dir", str(tmp_path / "jpegs")])
    assert p["per"].startswith("worker") and p["preprocess"]["crop"] == 32 and p["preprocess"]["resize"] == 37
    assert [(f["kind"], f["count"], f["width"], f["height"]) for f in p["files"]] == [
        ("imagenet", 4, 96, 72), ("phone", 1, 320, 240)]
    for kind, count in (("imagenet", 4), ("phone", 1)):
        assert {r["impl"] for r in rows(p, kind=kind, task="train")} == {"torchvision", "ours"}
        assert {r["impl"] for r in rows(p, kind=kind, task="eval")} == {"torchvision", "ours", "ours_draft"}
        for r in rows(p, kind=kind):
            assert r["images"] == count
            assert r["images_per_sec"] > 0 and r["speedup_vs_torchvision"] > 0
            assert len(r["speedup_per_round"]) == 1 and r["speedup_per_round"][0] == r["speedup_vs_torchvision"]
            # every pipeline but the reference is compared with torchvision on every image
            reference = r["impl"] == "torchvision"
            assert r["compared_images"] == (None if reference else count)
            assert (r["mean_abs_diff"] is None) == reference
        # The eval pipeline without draft is torchvision's Resize + CenterCrop, pixel for pixel.
        assert rows(p, kind=kind, task="eval", impl="ours")[0]["mean_abs_diff"] == 0.0
    # Same seed, same boxes and flips: the train crops differ only by resampling arithmetic.
    assert rows(p, kind="imagenet", task="train", impl="ours")[0]["mean_abs_diff"] < 0.5
    # 240 px decoded at 1/2 for a 37 px resize: close to full decoding, but not identical.
    draft_diff = rows(p, kind="phone", task="eval", impl="ours_draft")[0]["mean_abs_diff"]
    assert 0.0 < draft_diff < 2.0
    assert rows(p, kind="imagenet", task="eval", impl="ours_draft")[0]["mean_abs_diff"] == 0.0  # no draft at 72 px
    targets = {(t["kind"], t["task"]): t for t in p["targets"]}
    assert {k: t["required"] for k, t in targets.items()} == {("phone", "train"): 3.0, ("imagenet", "train"): 1.2}
    for (kind, task), t in targets.items():
        assert t["measured"] == rows(p, kind=kind, task=task, impl="ours")[0]["speedup_vs_torchvision"]
        assert t["met"] == (t["measured"] >= t["required"])
    assert p["norm_ms_per_image"] > 0


def test_model_mode_has_every_impl_variant_and_task(tmp_path):
    p = run_mode(tmp_path, ["model", "--batch_size", "2", "--image_size", "32", "--rounds", "1", "--iters", "1",
                            "--warmup", "0", "--amp", "bf16"])
    impls = {"ours", "torchvision"} | ({"timm"} if any(r["impl"] == "timm" for r in p["results"]) else set())
    assert len(p["results"]) == 2 * 2 * len(impls)   # {train, infer} x {eager, channels_last} x impls
    for task in ("train", "infer"):
        for variant in ("eager", "channels_last"):
            got = rows(p, task=task, variant=variant)
            assert {r["impl"] for r in got} == impls
            # the reported numbers come from the per-round times: images/s from their median, the
            # ratio from the median of per-round (its time / our time)
            ours = rows(p, task=task, variant=variant, impl="ours")[0]["seconds_per_round"]
            for r in got:
                assert len(r["seconds_per_round"]) == 1 and r["seconds_per_round"][0] > 0
                assert r["images_per_sec"] == 2 / r["seconds_per_round"][0]
                assert r["ours_speedup"] == r["seconds_per_round"][0] / ours[0]
    assert p["device"] == "cpu" and p["batch_size"] == 2 and p["amp"] == "bf16"


def test_onnx_mode_matches_eager_logits_at_each_batch(tmp_path):
    p = run_mode(tmp_path, ["onnx", "--image_size", "32", "--batch_sizes", "1", "3", "--rounds", "1",
                            "--threads", "1"])
    assert p["providers"] == ["CPUExecutionProvider"] and p["threads"] == 1
    impls = ["pytorch_eager", "pytorch_channels_last", "onnxruntime"]
    assert [(r["batch"], r["impl"]) for r in p["results"]] == [(b, i) for b in (1, 3) for i in impls]
    for r in p["results"]:
        assert r["images_per_sec"] > 0 and r["calls_per_round"] >= 1
        assert r["max_abs_logit"] > 0   # BN calibrated: logits are not vanishing
        if r["impl"] == "pytorch_eager":  # the reference: nothing to compare
            assert r["max_abs_diff_vs_eager"] is None and r["rel_diff_vs_eager"] is None
            continue
        # measured on this batch: channels_last's and onnxruntime's logits against eager NCHW's
        assert r["rel_diff_vs_eager"] == r["max_abs_diff_vs_eager"] / r["max_abs_logit"]
        # same weights; other kernels (channels_last) or BN folded into the convolutions (onnxruntime):
        # float32 rounding only, far below 1e-3 of the largest logit
        assert 0.0 <= r["rel_diff_vs_eager"] < 1e-3
        if r["impl"] == "onnxruntime":
            assert r["rel_diff_vs_eager"] > 0.0   # folding BN into the convolutions changes the rounding


def check_int8_rows(p: dict, batches: tuple[int, ...]) -> None:
    """fp32 and int8 rows at each batch; images/s, range and speed-up come from the per-round seconds."""
    assert [(r["batch"], r["precision"]) for r in p["results"]] == [(b, m) for b in batches for m in ("fp32", "int8")]
    for r in p["results"]:
        speeds = [r["batch"] / t for t in r["seconds_per_round"]]
        assert len(speeds) == p["rounds"] and r["calls_per_round"] >= 1
        assert (r["images_per_sec"], r["images_per_sec_min"], r["images_per_sec_max"]) == (
            statistics.median(speeds), min(speeds), max(speeds))
        fp32 = rows(p, batch=r["batch"], precision="fp32")[0]
        assert r["speedup_vs_fp32"] == r["images_per_sec"] / fp32["images_per_sec"]


def test_onnx_int8_mode_quantizes_times_and_scores_both_files(tmp_path, capsys):
    files = tmp_path / "files"
    p = run_mode(tmp_path, ["onnx", "--int8", "--image_size", "32", "--rounds", "2", "--threads", "1",
                            "--calib_dir", str(FLOWERS), "--calib_images", "6", "--eval_dir", str(FLOWERS),
                            "--save_dir", str(files)])
    fp32, int8 = files / "efficientnet_b0.onnx", files / "efficientnet_b0.int8.onnx"
    assert (p["fp32_file"], p["int8_file"], p["weights"]) == (str(fp32), str(int8), "random weights")
    assert p["calibration"] == {"dir": str(FLOWERS), "images": 6, "synthetic": False}
    assert p["providers"] == ["CPUExecutionProvider"] and p["image_size"] == 32 and p["model"] == "efficientnet_b0"
    check_int8_rows(p, (1, 32))
    # the int8 file is a QDQ model (the fp32 one has no such nodes) and the report counts its nodes
    counts = op_counts(int8)
    assert p["int8_ops"] == {"QuantizeLinear": counts["QuantizeLinear"], "DequantizeLinear": counts["DequantizeLinear"]}
    assert min(p["int8_ops"].values()) > 0 and op_counts(fp32)["QuantizeLinear"] == 0
    # accuracy: what compare_accuracy gives on the same two files
    reference = compare_accuracy(fp32, int8, FLOWERS)
    acc = p["accuracy"]
    assert acc == {k: getattr(reference, k) for k in ("images", "fp32_top1", "int8_top1", "fp32_top5", "int8_top5",
                                                      "agreement")}
    assert acc["images"] == 24 and 0.0 <= acc["agreement"] <= 1.0 and (acc["agreement"] * 24).is_integer()
    out = capsys.readouterr().out
    assert "| 32 | int8 |" in out and f"agree on the top-1 class of {acc['agreement']:.5f}" in out

    # given files are measured as they are: the same accuracy, nothing quantized
    given = run_mode(tmp_path, ["onnx", "--int8", "--fp32_file", str(fp32), "--int8_file", str(int8),
                                "--batch_sizes", "1", "--rounds", "1", "--threads", "1", "--eval_dir", str(FLOWERS)])
    assert (given["fp32_file"], given["int8_file"], given["calibration"]) == (str(fp32), str(int8), None)
    assert given["accuracy"] == acc and given["int8_ops"] == p["int8_ops"]
    check_int8_rows(given, (1,))

    # without --calib_dir: the benchmark's synthetic photos, and the output says they are for speed only
    synthetic = run_mode(tmp_path, ["onnx", "--int8", "--fp32_file", str(fp32), "--calib_images", "2",
                                    "--batch_sizes", "1", "--rounds", "1", "--threads", "1"])
    assert synthetic["calibration"]["synthetic"] and synthetic["calibration"]["images"] == 2
    assert synthetic["accuracy"] is None and synthetic["int8_file"] is None
    assert "synthetic JPEGs (no --calib_dir): the speed is right, the accuracy meaningless" in capsys.readouterr().out


def test_memory_mode_rows_and_checkpointing_ratio(tmp_path):
    p = run_mode(tmp_path, ["memory", "--model", "efficientnet_b0", "--image_size", "32", "--batch_sizes", "2",
                            "--amp_modes", "none"])
    keys = [(r["impl"], r["checkpointing"], r["amp"], r["batch"]) for r in p["results"]]
    assert keys == [("ours", False, "none", 2), ("ours", True, "none", 2), ("torchvision", False, "none", 2)]
    for r in p["results"]:
        assert "error" not in r and r["device"] == "cpu"
        assert r["cpu_step_mb"] > 0 and r["model_optimizer_mb"] > 0 and math.isfinite(r["loss"])
    off, on, tv = p["results"]
    assert on["step_vs_no_checkpointing"] == pytest.approx(on["cpu_step_mb"] / off["cpu_step_mb"])
    assert off["step_vs_no_checkpointing"] == 1.0 and tv["step_vs_no_checkpointing"] == 1.0


def test_memory_savings_use_the_matching_row():
    results = [dict(impl="ours", batch=8, amp="none", checkpointing=False, cpu_step_mb=1000.0),
               dict(impl="ours", batch=8, amp="none", checkpointing=True, cpu_step_mb=400.0),
               dict(impl="ours", batch=8, amp="bf16", checkpointing=True, cpu_step_mb=300.0),
               dict(impl="ours", batch=8, amp="bf16", checkpointing=False, cpu_step_mb=600.0)]
    add_savings(results)
    assert [r["step_vs_no_checkpointing"] for r in results] == [1.0, 0.4, 0.5, 1.0]


def test_train_mode_runs_train_py_and_the_plain_loop(tmp_path):
    p = run_mode(tmp_path, ["train", "--image_size", "32", "--batch_size", "4", "--classes", "2",
                            "--per_class", "4", "--jpeg_size", "64x48", "--num_workers", "0", "--rounds", "1",
                            "--data_dir", str(tmp_path / "jpegs")])
    assert [r["impl"] for r in p["results"]] == ["train.py", "plain_loop"]
    for r in p["results"]:
        assert r["images"] == 8 and r["images_per_sec"] > 0 and math.isfinite(r["final_loss"])
    train_py, plain = p["results"]
    assert train_py["vs_plain_loop"] == train_py["per_round"][0] / plain["per_round"][0]
    assert "--epoch_size 2" in p["train_py_command"] and "--device_target CPU" in p["train_py_command"]
    class_dirs = sorted((tmp_path / "jpegs" / "folder-2x4-64x48" / "train").iterdir())
    assert [d.name for d in class_dirs] == ["class_00", "class_01"]
    assert all(len(list(d.glob("*.jpg"))) == 4 for d in class_dirs)


def test_bad_options_exit_2_with_one_line(capsys):
    assert benchmark.main(["data", "--num_images", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num_images must be >= 1, got 0"
    assert benchmark.main(["onnx", "--model", "efficientnet_b9"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'efficientnet_b9'")
    assert benchmark.main(["onnx", "--eval_dir", "x", "--save_dir", "y"]) == 2
    assert capsys.readouterr().err.strip() == "error: --eval_dir, --save_dir: --int8 options; add --int8"
    assert benchmark.main(["onnx", "--int8", "--int8_file", "missing.onnx"]) == 2
    assert capsys.readouterr().err.strip() == "error: --int8_file missing.onnx: no such file"
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["data", "--phone_size", "big"])
    assert exc.value.code == 2


@pytest.fixture
def no_run(monkeypatch):
    """Every mode's run fails the test: the checks must come before any benchmarking."""
    def must_not_run(args):
        raise AssertionError(f"{args.mode} ran despite bad options")

    for module, _ in benchmark.MODES.values():
        monkeypatch.setattr(module, "run", must_not_run)


@pytest.mark.parametrize("argv, message", [
    (["model", "--iters", "0", "--batch_size", "2"], "--iters must be >= 1, got 0"),
    (["model", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["model", "--image_size", "0"], "--image_size must be >= 32, got 0"),
    (["model", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["model", "--rounds", "0", "--warmup", "-1"], "--rounds must be >= 1, got 0; --warmup must be >= 0, got -1"),
    (["data", "--image_size", "0"], "--image_size must be >= 32, got 0"),
    (["data", "--rounds", "-3"], "--rounds must be >= 1, got -3"),
    (["onnx", "--image_size", "0"], "--image_size must be >= 32, got 0"),
    (["onnx", "--batch_sizes", "1", "0"], "--batch_sizes must be >= 1, got [1, 0]"),
    (["onnx", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["onnx", "--int8", "--calib_images", "0"], "--calib_images must be >= 1, got 0"),
    (["memory", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["memory", "--image_size", "16"], "--image_size must be >= 32, got 16"),
    (["train", "--num_workers", "-1"], "--num_workers must be >= 0, got -1"),
    (["train", "--per_class", "0"], "--per_class must be >= 1, got 0"),
    (["finetune", "--sets", "x", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["finetune", "--sets", "x", "--image_size", "16"], "--image_size must be >= 32, got 16"),
])
def test_bad_counts_and_sizes_exit_2_before_the_run(no_run, capsys, argv, message):
    assert benchmark.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_unwritable_outputs_exit_2_before_the_run(no_run, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    in_the_way = "cannot write there (a file is in the way); choose a writable folder"
    assert benchmark.main(["onnx", "--json", str(a_file / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --json {a_file}/x.json: {in_the_way}"
    assert benchmark.main(["onnx", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --json {tmp_path} is a folder; give a file name"
    for mode in ("data", "train"):
        assert benchmark.main([mode, "--data_dir", str(a_file)]) == 2
        assert capsys.readouterr().err.strip() == f"error: --data_dir {a_file}: {in_the_way}"
    assert benchmark.main(["onnx", "--int8", "--save_dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --save_dir {a_file}: {in_the_way}"


# --- finetune: the recipe vs a plain loop over sets and seeds ------------------------------------

@pytest.fixture
def toy_set(tmp_path) -> Path:
    """3 classes x 6 train / 6 val images of 40x30 px."""
    return make_image_folder(tmp_path / "toy", classes=3, per_class=6, split="both")


def test_finetune_set_specs_parse():
    assert parse_set("data/flowers17") == SetSpec("data/flowers17", None)
    assert parse_set("data/flowers17:10") == SetSpec("data/flowers17", 10)
    assert parse_set("digits:5") == SetSpec("digits", 5)
    assert [parse_set(t).label for t in ("data/flowers17/", "data/flowers17:10", "digits")] == [
        "flowers17", "flowers17:10", "digits"]
    for text, message in (("flowers17:0", "PER_CLASS must be >= 1, got 0"),
                          ("flowers17:-3", "PER_CLASS must be >= 1, got -3"),
                          ("flowers17:ten", "PER_CLASS must be a whole number, got 'ten'"),
                          (":5", "no ROOT before ':'")):
        with pytest.raises(InputError, match=message):
            parse_set(text)


def test_finetune_subsets_are_seeded_exact_and_leave_val_whole(toy_set, tmp_path):
    photo_set = check_set(parse_set(f"{toy_set}:3"))
    assert (photo_set.classes, photo_set.train_per_class, photo_set.val_images) == (
        ["class_00", "class_01", "class_02"], [6, 6, 6], 18)
    assert photo_set.train_images == 9
    picks = {}
    for name, seed in (("a", 0), ("b", 1), ("again", 0)):
        root = training_root(photo_set, seed, tmp_path / name)
        classes, train = list_class_folders(root / "train")
        assert classes == photo_set.classes
        assert np.bincount([c for _, c in train]).tolist() == [3, 3, 3]   # exactly PER_CLASS per class
        targets = [Path(p).resolve() for p, _ in train]
        assert all(t.parent.parent == toy_set / "train" for t in targets)  # links into the set's train/
        picks[name] = sorted(targets)
        assert (root / "val").resolve() == toy_set / "val"   # val/ whole: the set's own
    assert picks["a"] == picks["again"] and picks["a"] != picks["b"]
    assert [len(list((toy_set / split).rglob("*.jpg"))) for split in ("train", "val")] == [18, 18]  # untouched
    assert training_root(check_set(parse_set(str(toy_set))), 0, tmp_path / "full") == toy_set
    with pytest.raises(InputError, match="class 'class_00' has only 6 training images; PER_CLASS must be <= 6"):
        check_set(parse_set(f"{toy_set}:7"))


def test_recipe_for_is_what_finetune_auto_sets():
    for images in (12, 999, 1000, 3068, 50_000):
        cfg = load_config([])
        apply_finetune_defaults(cfg, images)
        recipe = recipe_for(images, 10)
        assert recipe == {k: getattr(cfg, k) for k in ("lr_max", "epoch_size", "batch_size", "dropout")}


def test_finetune_mode_runs_recipe_and_plain_loop_per_seed(toy_set, tmp_path, capsys):
    p = run_mode(tmp_path, ["finetune", "--sets", f"{toy_set}:4", "--seeds", "1", "--image_size", "32",
                            "--epochs_scale", "0.05", "--num_workers", "0"])
    epochs = {"recipe": scaled_epochs(recipe_for(12, 3)["epoch_size"], 0.05), "plain_loop": 1}
    assert [(r["set"], r["seed"], r["method"], r["epochs"], r["image_size"]) for r in p["runs"]] == [
        ("toy:4", 0, "recipe", epochs["recipe"], 32), ("toy:4", 0, "plain_loop", 1, 32)]
    for r in p["runs"]:
        assert 0.0 <= r["top1"] <= 1.0 and (r["top1"] * 18).is_integer() and r["seconds"] > 0
    recipe, plain = p["runs"]
    assert "--config configs/finetune.yaml" in recipe["command"] and "--seed 0" in recipe["command"]
    assert f"--epoch_size {epochs['recipe']}" in recipe["command"] and "--device_target CPU" in recipe["command"]
    (s,) = p["summary"]
    assert (s["set"], s["images"], s["classes"], s["val_images"]) == ("toy:4", 12, 3, 18)
    assert s["recipe"]["top1_mean"] == recipe["top1"] and s["plain_loop"]["top1_mean"] == plain["top1"]
    assert s["recipe"]["top1_std"] is None and s["within_one_plain_std"] is None   # one seed: no spread
    assert s["lead_points"] == pytest.approx(100 * (recipe["top1"] - plain["top1"]))
    assert p["machine"]["cpu"] and p["seeds"] == [0]
    assert "| toy:4 | 12 | 3 |" in capsys.readouterr().out


def test_plain_finetune_loop_is_seeded(toy_set):
    _, train = list_class_folders(toy_set / "train")
    _, val = list_class_folders(toy_set / "val")
    runs = [plain_finetune(train, val, 3, "efficientnet_lite0", 32, epochs=2, seed=5) for _ in range(2)]
    (model_a, top1_a), (model_b, top1_b) = runs
    assert top1_a == top1_b and 0.0 <= top1_a <= 1.0
    state_b = model_b.state_dict()
    assert all(torch.equal(v, state_b[k]) for k, v in model_a.state_dict().items())


def test_finetune_bad_sets_exit_2_with_one_line(toy_set, tmp_path, capsys):
    for argv, message in (
        (["--sets", str(tmp_path / "missing")], f"--sets {tmp_path}/missing: no such folder"),
        (["--sets", str(toy_set / "train")], "expected a dataset root with train/<class>/* and val/<class>/*"),
        (["--sets", f"{toy_set}:7"], "class 'class_00' has only 6 training images; PER_CLASS must be <= 6"),
        (["--sets", f"{toy_set}:0"], "PER_CLASS must be >= 1, got 0"),
        (["--sets", str(toy_set), "--epochs_scale", "0"], "--epochs_scale must be > 0, got 0.0"),
        (["--sets", str(toy_set), "--model", "efficientnet_b9"], "unknown model 'efficientnet_b9'"),
    ):
        assert benchmark.main(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_finetune_digits_set_is_make_digits_folder(tmp_path):
    pytest.importorskip("sklearn")
    from bench.finetune_sets import write_digits

    photo_set = check_set(parse_set("digits:5"), write_digits(tmp_path))
    assert (len(photo_set.classes), photo_set.val_images, photo_set.train_images) == (10, 359, 50)
    _, train = list_class_folders(training_root(photo_set, 2, tmp_path / "subset") / "train")
    assert np.bincount([c for _, c in train]).tolist() == [5] * 10
