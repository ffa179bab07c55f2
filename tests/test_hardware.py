"""hardware.precision, torch's thread defaults and the numbers bf16 must not change."""

import platform

import pytest
import torch
from omegaconf import OmegaConf

import marlrun.hardware as hardware
from conftest import SMALL_PURSUIT, run_cli
from marlrun.errors import UserError
from marlrun.hardware import resolve_precision, torch_threads
from marlrun.runner import train
from test_super_ddqn import OBS, make_algo

CPU = torch.device("cpu")
HAS_BF16 = hardware.bf16_supported(CPU)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ())


@pytest.fixture
def cpu_with_amx(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ("amx_bf16",))


def test_bf16_is_refused_in_one_line_where_the_cpu_has_no_bf16_units(cpu_without_bf16):
    with pytest.raises(UserError, match="hardware.precision=bf16: this CPU .* use hardware.precision=fp32") as info:
        resolve_precision("bf16", CPU)
    assert "\n" not in str(info.value)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_auto_is_bf16_on_a_cpu_with_amx(cpu_with_amx):
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_auto_is_fp32_on_an_intel_cpu_with_avx512_bf16_but_no_amx(monkeypatch):
    # bf16 runs there (so it may be asked for), but its matmuls are slower than fp32's
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ("avx512_bf16",))
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_auto_is_bf16_on_an_amd_cpu_with_avx512_bf16(monkeypatch):
    # Zen 4 and later: bf16 matmuls about twice fp32's speed without AMX
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ("avx512_bf16",))
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: "AuthenticAMD")
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ())  # an older AMD CPU: no bf16 units at all
    assert resolve_precision("auto", CPU) == "fp32"


def test_auto_is_fp32_for_networks_too_small_for_bf16_to_pay(cpu_with_amx):
    assert resolve_precision("auto", CPU, auto_bf16=False) == "fp32"
    assert resolve_precision("bf16", CPU, auto_bf16=False) == "bf16"  # asked for by name: still bf16


def test_a_maddpg_run_with_auto_precision_runs_fp32_where_super_ddqn_runs_bf16(cpu_with_amx, compose_cfg, tmp_path, monkeypatch):
    from marlrun.algos.maddpg import MADDPG
    from marlrun.algos.super_ddqn import SuperDDQN

    assert not MADDPG.auto_bf16 and SuperDDQN.auto_bf16
    tiny = ["hardware=cpu", "hardware.env_workers=0", "hardware.num_envs=2", "total_steps=100", "eval_episodes=0", "progress=false", "print_config=false"]
    maddpg = train(compose_cfg(["algo=maddpg", "env=simple_adversary", *tiny, "algo.learning_starts=50", "algo.batch_size=16"]), tmp_path / "maddpg")
    assert maddpg["precision"] == "fp32"
    if HAS_BF16:  # bf16 must really run for the other half
        ddqn = train(compose_cfg([*SMALL_PURSUIT, "total_steps=100", "eval_episodes=0"]), tmp_path / "ddqn")
        assert ddqn["precision"] == "bf16"


def test_the_cpu_vendor_is_read_from_cpuinfo():
    vendor = hardware.cpu_vendor()
    assert isinstance(vendor, str)
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine")


def test_a_refused_precision_stops_the_run_before_it_writes_anything(cpu_without_bf16, compose_cfg, tmp_path):
    with pytest.raises(UserError, match="no bf16 matmul units"):
        train(compose_cfg([*SMALL_PURSUIT, "hardware.precision=bf16", "total_steps=100"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unknown_precision_is_one_line_from_the_cli(tmp_path):
    result = run_cli("train", *SMALL_PURSUIT, "hardware.precision=fp16", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "hardware.precision" in result.stderr and "fp16" in result.stderr and "Traceback" not in result.stderr


def test_threads_take_every_core_the_environment_leaves(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "available_cores", lambda: 2)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0.0)  # a quiet machine
    auto = OmegaConf.create({"torch_threads": 0, "env_workers": 1})  # hardware=auto asks for one worker
    assert torch_threads(auto, env_workers=0) == 2  # the native backend starts none: both cores to torch
    assert torch_threads(auto, env_workers=1) == 1  # the library in one worker process
    assert torch_threads(auto) == 1  # the configured workers when the env is not known yet
    assert torch_threads(auto, parallel_jobs=2, env_workers=0) == 1  # two jobs side by side share the cores
    assert torch_threads(auto, parallel_jobs=4, env_workers=0) == 1  # never 0, never more than a share
    monkeypatch.setattr(hardware, "available_cores", lambda: 64)
    assert torch_threads(auto, env_workers=0) == 4  # at most 4: these networks gain nothing from more


def test_threads_leave_out_the_cores_other_processes_keep_busy(monkeypatch):
    """One busy core of two: one thread (two would spin against the other process at a tenth of the speed)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    auto = OmegaConf.create({"torch_threads": 0, "env_workers": 0})
    monkeypatch.setattr(hardware, "available_cores", lambda: 2)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0.97)
    assert torch_threads(auto) == 1
    why = hardware.explain(hardware.HardwareConfig(), torch.device("cpu"), "fp32", 1, 0)["torch_threads_why"]
    assert why.endswith("less the 1.0 cores other processes kept busy at start")
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0.3)  # a light background load takes no core
    assert torch_threads(auto) == 2
    monkeypatch.setattr(hardware, "available_cores", lambda: 8)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 7.6)  # never fewer than one
    assert torch_threads(auto) == 1
    monkeypatch.setattr(hardware, "busy_cores", lambda: 3.2)
    assert torch_threads(auto) == 4  # 8 cores less 3 busy, at most 4
    assert torch_threads(OmegaConf.create({"torch_threads": 2, "env_workers": 0})) == 2  # a setting is a setting


def test_busy_cores_reads_the_machine():
    busy = hardware.busy_cores(0.05)
    assert 0.0 <= busy <= hardware.available_cores() + 0.01


def test_a_native_run_records_the_threads_and_precision_it_ran(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0.0)  # as on a quiet machine
    summary = train(compose_cfg([*SMALL_PURSUIT, "hardware=auto", "hardware.device=cpu", "total_steps=100", "eval_episodes=0"]), tmp_path)
    assert summary["torch_threads"] == min(4, hardware.available_cores())  # auto's env worker does not exist natively
    assert summary["precision"] == ("bf16" if hardware.cpu_bf16_is_fast() else "fp32")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_keeps_freed_memory_on_glibc():
    assert hardware.keep_freed_memory()


FLUSH_PROBE = """
import sys, torch
from omegaconf import OmegaConf
from marlrun.hardware import setup
setup(OmegaConf.create({"device": "cpu", "precision": "fp32", "flush_denormal": sys.argv[1] == "true"}))
torch.set_num_threads(2)
n = 1 << 22  # every thread takes a share
product = torch.full((n,), 1e-20) * torch.full((n,), 1e-19)  # 1e-39, a denormal
print(int((product == 0).sum()), n)
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="FTZ/DAZ are x86 flags")
@pytest.mark.parametrize("flush", [True, False])
def test_setup_flushes_denormals_on_every_torch_thread_or_keeps_them(flush):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FLUSH_PROBE, str(flush).lower()], capture_output=True, text=True, check=True).stdout
    zeros, n = map(int, out.split())
    assert zeros == (n if flush else 0)  # the pool's threads, started after setup, inherit the main thread's flags


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units")
def test_bf16_keeps_master_weights_optimizer_state_and_decisions_in_fp32():
    fp32, bf16 = make_algo(precision="fp32"), make_algo(precision="bf16")
    bf16.q.load_state_dict(fp32.q.state_dict())
    bf16.q_target.load_state_dict(fp32.q_target.state_dict())
    assert all(p.dtype == torch.float32 for p in bf16.q.parameters())
    assert all(p.dtype == torch.bfloat16 for p in bf16.q_target.parameters())  # it only computes
    gen = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randint(0, 3, (3, 32, *OBS), generator=gen).float(), torch.randint(0, 3, (3, 32, *OBS), generator=gen).float()
    action, reward = torch.randint(0, 5, (3, 32), generator=gen), torch.randn(3, 32, generator=gen)
    term = (torch.rand(3, 32, generator=gen) < 0.1).float()
    td32, td16 = fp32.td_error(obs, action, reward, next_obs, term), bf16.td_error(obs, action, reward, next_obs, term)
    assert td16.dtype == torch.float32
    assert (td16 - td32).abs().max() < 0.05 * td32.abs().max()  # bf16 rounding, not a different computation
    assert (td16 != td32).any()  # it did run in bf16
    loss = td16.pow(2).mean()
    loss.backward()
    bf16.optimizer.step()
    assert all(p.grad.dtype == torch.float32 for p in bf16.q.parameters())
    assert all(v.dtype == torch.float32 for state in bf16.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_and_precision_give_the_same_run(precision, compose_cfg, tmp_path):
    if precision == "bf16" and not HAS_BF16:
        pytest.skip("this CPU has no bf16 units")
    from marlrun.metrics import read_metrics

    overrides = [*SMALL_PURSUIT, f"hardware.precision={precision}", "total_steps=600", "log_interval=200", "eval_episodes=2",
                 "eval_interval=0", "algo.buffer_size=1000", "algo.learning_starts=200"]
    runs = []
    for name in ("a", "b"):
        train(compose_cfg(overrides), tmp_path / name)
        runs.append([{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(tmp_path / name)])
    assert runs[0] == runs[1] and "train/loss" in runs[0][-1]
