"""The device layer: detection order, dtype refusals, scalers, and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diffusers_npu import devices
from diffusers_npu.errors import UserError


def test_cpu_detected_without_npu_or_cuda(monkeypatch):
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    assert devices.detect_kind() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_npu_wins_over_others_when_present(npu_double, monkeypatch):
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    assert devices.detect_kind() == "npu"
    dev = devices.get_device()
    assert dev.kind == "npu"
    assert npu_double.npu.config.allow_internal_format is False  # the reference's runtime setting


def test_override_by_flag_and_env(npu_double, monkeypatch):
    assert devices.detect_kind("cpu") == "cpu"
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert devices.detect_kind() == "cpu"
    with pytest.raises(UserError, match="unknown device"):
        devices.detect_kind("tpu")


def test_npu_request_without_torch_npu_is_an_error():
    with pytest.raises(UserError, match="torch_npu"):
        devices.detect_kind("npu")


def test_import_never_imports_torch_npu():
    """``import diffusers_npu`` (and its modules) with torch_npu absent neither fails nor tries to import it."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    assert not name.startswith('torch_npu'), 'torch_npu imported'\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import diffusers_npu, diffusers_npu.devices as d, diffusers_npu.attention, diffusers_npu.optim\n"
        "assert d.get_device().kind in ('cpu', 'cuda') and 'torch_npu' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fp16_on_cpu_is_refused_not_downgraded():
    cpu = devices.Device("cpu")
    with pytest.raises(UserError, match="fp16 is not supported on cpu"):
        cpu.check_dtype(torch.float16)
    with pytest.raises(UserError, match="fp16"):
        cpu.autocast(torch.float16)
    assert cpu.check_dtype(torch.bfloat16) is torch.bfloat16
    with cpu.autocast(torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with cpu.autocast(torch.float32):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_static_loss_scale_is_npu_only():
    with pytest.raises(UserError, match="static"):
        devices.Device("cpu").grad_scaler(static=True)


def test_npu_static_scaler_never_skips_and_never_changes(npu_double):
    """torch_npu dynamic=False: an inf gradient still steps, and the scale stays fixed."""
    scaler = devices.Device("npu").grad_scaler(static=True, init_scale=128.0)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale(p.sum()).backward()
    p.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 128.0 and not torch.equal(p.detach(), torch.ones(2))
    assert scaler.state_dict()["dynamic"] is False


def test_dynamic_scaler_backs_off_on_inf():
    scaler = devices.Device("cpu").grad_scaler(init_scale=128.0)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale(p.sum()).backward()
    p.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 64.0 and torch.equal(p.detach(), torch.ones(2))


def test_disabled_scaler_is_a_pass_through():
    scaler = devices.Device("cpu").grad_scaler(enabled=False)
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss


def test_build_accelerator_static_scale_roundtrips(npu_double, tmp_path):
    """The NPU static scaler is handed to accelerate before prepare() and survives save/load_state."""
    dev = devices.Device("npu")
    acc = devices.build_accelerator(dev, "fp16", loss_scale="static", init_loss_scale=256.0)
    assert acc.scaler.state_dict()["dynamic"] is False and acc.scaler.get_scale() == 256.0
    model = torch.nn.Linear(2, 2)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert opt.scaler is acc.scaler
    acc.save_state(str(tmp_path / "state"))
    acc.scaler = dev.grad_scaler(static=True, init_scale=8.0)
    acc.load_state(str(tmp_path / "state"))
    assert acc.scaler.get_scale() == 256.0 and acc.scaler.state_dict()["dynamic"] is False


def test_build_accelerator_refuses_fp16_on_cpu():
    with pytest.raises(UserError, match="fp16 is not supported on cpu"):
        devices.build_accelerator(devices.Device("cpu"), "fp16")


def test_memory_and_sync_are_safe_on_cpu():
    cpu = devices.Device("cpu")
    cpu.synchronize()
    cpu.reset_peak_memory()
    assert cpu.peak_memory_gib() == 0.0
    cpu.manual_seed(3)
    a = torch.randn(3)
    cpu.manual_seed(3)
    assert torch.equal(a, torch.randn(3))


def test_settings_for_gives_each_kind_its_defaults():
    assert devices.settings_for("npu", "fp16") == devices.Settings("npu_fa", "npu_fused_adamw", "fp16")
    assert devices.settings_for("npu", "no").attention == "sdpa"  # npu_fa computes in fp16/bf16 only
    assert devices.settings_for("cuda", "bf16") == devices.Settings("sdpa", "adamw_fused", "bf16")
    assert devices.settings_for("cpu") == devices.Settings("sdpa", "adamw", "no")
    assert devices.settings_for("cpu", "no", "math_fp32", "adamw_fused") == devices.Settings(
        "math_fp32", "adamw_fused", "no"
    )


def test_settings_for_replaces_what_the_kind_cannot_run_and_says_so():
    got = devices.settings_for("cpu", "fp16", "npu_fa", "npu_fused_adamw")
    assert (got.attention, got.optimizer, got.mixed_precision) == ("sdpa", "adamw", "no")
    assert got.notes == (
        "cpu cannot train in fp16: --mixed_precision no",
        "cpu cannot run --attention npu_fa in no: --attention sdpa",
        "cpu cannot run --optimizer npu_fused_adamw: --optimizer adamw",
    )
    assert devices.settings_for("npu", "no", "npu_fa").notes == (
        "npu cannot run --attention npu_fa in no: --attention sdpa",
    )


def test_devices_cli_prints_the_line_the_launchers_read():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "diffusers_npu.devices", "--mixed_precision", "fp16", "--attention",
                           "npu_fa"], capture_output=True, text=True, env={**__import__("os").environ, devices.DEVICE_ENV: "cpu"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "1", "sdpa", "adamw", "no"]
    assert "note: cpu cannot train in fp16" in proc.stderr
