"""scripts/gpu_check.sh and scripts/gpu_check.py: without CUDA one line, every step skipped, exit 0; the step
runner's pass / fail / skipped / timeout bookkeeping on trivial steps (the GPU steps run on GPU machines)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402 - scripts/ is not a package

from gpu_check import RESULT_PREFIX, STEPS, Context, Step, format_table, run_steps, summary  # noqa: E402


def _python(code: str):
    return lambda ctx: [sys.executable, "-c", code]


def _report(status: str, reason: str = "", **metrics) -> str:
    return f"print({RESULT_PREFIX + json.dumps(dict(status=status, reason=reason, metrics=metrics))!r})"


def test_without_cuda_every_step_is_skipped_in_one_line_and_the_exit_status_is_0(tmp_path):
    output = tmp_path / "out" / "summary.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--output", str(output)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"gpu_check: no CUDA here (torch {json.loads(output.read_text())['machine']['torch']} sees no CUDA device): "
        f"all {len(STEPS)} steps skipped; summary in {output}"]
    report = json.loads(output.read_text())
    assert [s["name"] for s in report["steps"]] == [s.name for s in STEPS] == [
        "train_fp16", "train_bf16", "ddp_nccl", "compile", "grad_ckpt_b3", "eval", "export", "onnx_cuda",
        "onnx_tensorrt", "benchmark"]
    assert {(s["status"], s["reason"]) for s in report["steps"]} == {("skipped", "no CUDA")}
    assert report["counts"] == {"pass": 0, "fail": 0, "timeout": 0, "skipped": len(STEPS)}
    assert report["machine"]["cuda"] is False and list(tmp_path.iterdir()) == [tmp_path / "out"]  # no work folder


def test_an_unknown_step_is_one_error_line_and_exit_2(capsys):
    assert gpu_check.main(["--steps", "train_fp16,warp_drive"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"error: unknown step 'warp_drive'; steps: {', '.join(s.name for s in STEPS)}"]


def test_step_runner_records_pass_fail_skip_and_timeout_and_goes_on_after_each(tmp_path):
    marker = tmp_path / "grandchild.pid"
    steps = [
        Step("plain", "exit 0", 30, _python("print('two words')"), lambda out, ctx: {"words": len(out.split())}),
        Step("reported", "own result line", 30, _python(_report("pass", images_per_s=12.5, peak_memory_mb=300))),
        Step("child_skip", "child says skipped", 30, _python(_report("skipped", "this GPU has no bf16"))),
        Step("child_fail", "child says fail", 30, _python(_report("fail", "loss did not fall", images_per_s=3))),
        Step("crash", "exit 3", 30, _python("import sys; print('some output'); sys.exit('boom: out of memory')")),
        Step("hang", "sleeps past its timeout with a child", 1,
             _python(f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
                     f"time.sleep(60)']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)")),
        Step("plan_skip", "missing input", 30, lambda ctx: "needs the checkpoint of ddp_nccl"),
        Step("plan_error", "broken plan", 30, lambda ctx: 1 / 0),
        Step("bad_parser", "metrics fail", 30, _python("pass"), lambda out, ctx: json.loads("not json")),
        Step("last", "still runs", 30, _python("pass")),
    ]
    lines = []
    results = run_steps(steps, Context(tmp_path), announce=lines.append)
    got = {r.name: (r.status, r.reason, r.metrics) for r in results}
    assert got == {
        "plain": ("pass", "", {"words": 2}),
        "reported": ("pass", "", {"images_per_s": 12.5, "peak_memory_mb": 300}),
        "child_skip": ("skipped", "this GPU has no bf16", {}),
        "child_fail": ("fail", "loss did not fall", {"images_per_s": 3}),
        "crash": ("fail", "exit status 1: boom: out of memory", {}),
        "hang": ("timeout", "no result after 1 s", {}),
        "plan_skip": ("skipped", "needs the checkpoint of ddp_nccl", {}),
        "plan_error": ("fail", "ZeroDivisionError: division by zero", {}),
        "bad_parser": ("fail", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)", {}),
        "last": ("pass", "", {}),
    }
    assert lines[4] == "gpu_check: crash: fail (exit status 1: boom: out of memory)" and lines[-1] == "gpu_check: last: pass"
    assert (tmp_path / "logs" / "crash.log").read_text() == "some output\nboom: out of memory\n"
    grandchild = int(marker.read_text())
    for _ in range(100):  # the timeout ended the whole process group; give the kernel a moment to reap it
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
    report = summary(results, {"cuda": True}, tmp_path)
    assert report["counts"] == {"pass": 3, "fail": 4, "timeout": 1, "skipped": 2}
    table = format_table(results).splitlines()
    assert table[0].split() == ["step", "status", "s", "images/s", "peak", "MB", "reason"]
    assert table[2].split()[:2] == ["reported", "pass"] and table[2].split()[3:5] == ["12", "300"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not running
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_the_training_runs_flags_are_ones_train_py_accepts(tmp_path, capsys):
    import train

    data = gpu_check.write_image_folder(tmp_path / "data")
    flags = [f for f in gpu_check.RUN_FLAGS]
    flags[flags.index("--amp") + 1] = "bf16"  # CPU autocast; the check itself runs fp16 on the GPU
    code = train.main(["--dataset_path", str(data), "--device_target", "CPU", "--check",
                       "--save_checkpoint_path", str(tmp_path / "run"), *flags])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "") and out.startswith("ok: efficientnet_b0 on CPU, 144 training images, "
                                                     "48 validation images, 3 classes")
