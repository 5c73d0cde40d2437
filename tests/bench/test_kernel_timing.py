"""The GPU kernel benchmarks' shared opening and helpers, run on CPU with the device queries stubbed."""

import torch

from ssmkit.bench import kernel_timing


def test_rel_error_is_the_relative_norm_of_the_difference():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])
    assert kernel_timing.rel_error(a, b) == 3.0 / 4.0


def test_start_kernel_run_logs_device_validation_and_copy_ceiling(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    monkeypatch.setattr(kernel_timing, "copy_bandwidth", lambda: 2.5e12)
    seen = []

    def validate(cfg, log):
        seen.append(cfg)
        log("validated")
        return False, {"y": 0.5}

    log, errs, bw = kernel_timing.start_kernel_run(validate, "cfg")
    assert (seen, errs, bw) == (["cfg"], {"y": 0.5}, 2.5e12)
    assert log.lines[0].startswith("device FakeGPU; torch ")
    assert log.lines[1:] == ["validated", "VALIDATION FAILED: timing anyway, numbers below are not to be trusted",
                             "device-to-device copy: 2.50 TB/s (read + write)"]
    assert capsys.readouterr().out.splitlines() == log.lines


def test_kernel_times_averages_cuda_events_per_call_and_skips_host_events():
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(name="gemv_kernel_with_a_long_name", device_type=cuda, device_time=6.0),
              SimpleNamespace(name="gemv_kernel_with_a_long_name", device_type=cuda, device_time=4.0),
              SimpleNamespace(name="step", device_type=cuda, device_time=3.0),
              SimpleNamespace(name="aten::linear", device_type=cpu, device_time=0.0)]
    prof = SimpleNamespace(events=lambda: events)
    assert kernel_timing.kernel_times(prof, calls=2, width=4) == {"gemv": [1.0, 5.0], "step": [0.5, 1.5]}
