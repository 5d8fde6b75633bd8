"""The device group: named machines, what makes a machine not one of them, core pinning, and the
count of jobs timed side by side."""
import os
import re
import subprocess
from types import SimpleNamespace

import pytest

from bsb_hydra.backends.base import Unsupported
from bsb_hydra.concurrency import JobSlot
from bsb_hydra.config import ConfigError, DeviceConfig
from bsb_hydra.cell import device_mismatch
from tests.conftest import SMOKE, run_bsb, runs_of

EPYC = {"arch": "x86_64", "cpu": "AMD EPYC", "isa": "avx2"}
GRAVITON2 = {"arch": "aarch64", "cpu": "", "isa": "dotprod,fp16,neon"}


def _device(compose_cfg, name):
    cfg = compose_cfg([f"device={name}"])
    return DeviceConfig(**{k: v for k, v in cfg.device.items()})


@pytest.mark.parametrize("name,info,needle", [
    ("graviton3", EPYC, "expects arch aarch64, this machine is x86_64"),
    ("x86_64_vnni", EPYC, "has avx512_vnni, avx512f, which this CPU (AMD EPYC; isa avx2) lacks"),
    ("graviton3", GRAVITON2, "has bf16, i8mm, sve, which this CPU"),
    ("graviton4", GRAVITON2, "not a graviton4"),
])
def test_a_named_device_this_machine_is_not_is_unsupported(compose_cfg, name, info, needle):
    with pytest.raises(Unsupported, match=re.escape(needle)):
        device_mismatch(_device(compose_cfg, name), info)


@pytest.mark.parametrize("name,info", [("graviton2", GRAVITON2), ("ampere_altra", GRAVITON2), ("rpi5", GRAVITON2),
                                       ("x86_64", EPYC), ("local", EPYC), ("local", GRAVITON2)])
def test_matching_devices_pass(compose_cfg, name, info):
    device_mismatch(_device(compose_cfg, name), info)


def test_device_values_are_checked():
    with pytest.raises(ConfigError, match="expected_isa contains 'avx1024'"):
        DeviceConfig(expected_isa=["avx1024"])
    with pytest.raises(ConfigError, match="core_pinning=\\[\\] is not allowed"):
        DeviceConfig(core_pinning=[])
    with pytest.raises(ConfigError, match="fewer CPUs than device.threads=2"):
        DeviceConfig(core_pinning=[0], threads=2)
    with pytest.raises(Unsupported, match="names CPUs this process cannot use"):
        device_mismatch(DeviceConfig(core_pinning=[4096]), EPYC)



def test_pinning_and_isa_keys_at_their_defaults_leave_config_hash_and_params_as_before(compose_cfg):
    """device.core_pinning / device.expected_isa came after runs had been stored: unset, they change
    neither config_hash (resume still finds the older runs) nor the params; set, they do."""
    from omegaconf import open_dict

    from bsb_hydra.cell import config_hash
    from bsb_hydra.tracking import drop_inert_params, resolved_params

    cfg = compose_cfg([])
    cfg.paths.root = "/tmp/project"
    before = cfg.copy()
    with open_dict(before):
        del before.device.core_pinning
        del before.device.expected_isa
    assert config_hash(cfg) == config_hash(before)
    assert not {"device.core_pinning", "device.expected_isa"} & set(resolved_params(cfg))
    # runs logged while these keys were in the params at their defaults read as the same config
    logged = {"device.core_pinning": "None", "device.expected_isa": "[]", "device.threads": "1"}
    assert drop_inert_params(logged) == {"device.threads": "1"}
    cfg.device.core_pinning = [0]
    assert config_hash(cfg) != config_hash(before)
    assert resolved_params(cfg)["device.core_pinning"] == "[0]"
    assert drop_inert_params({"device.expected_isa": '["avx2"]'}) == {"device.expected_isa": '["avx2"]'}


def test_named_device_cell_ends_unsupported_before_training(tmp_path):
    run_bsb(["model=mlp", "data=digits", "device=graviton3", *SMOKE], tmp_path)
    _, runs = runs_of(tmp_path)
    tags = runs[0].data.tags
    assert tags["status"] == "unsupported" and "device=graviton3" in tags["reason"]
    assert "fp32_source" not in tags


def test_core_pinning_reaches_the_benchmark_worker(tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    run_bsb(["model=mlp", "data=digits", "quant=dynamic", "backend=onnxruntime", f"device.core_pinning=[{cpu}]",
             *SMOKE], tmp_path)
    _, runs = runs_of(tmp_path)
    tags = runs[0].data.tags
    assert tags["status"] == "ok", tags.get("reason")
    assert tags["cpus_pinned"] == str(cpu)  # what the worker process itself reported
    assert tags["concurrent_jobs"] == "1" and runs[0].data.metrics["concurrent_jobs"] == 1


def test_job_slots_count_live_jobs_and_prune_dead_ones(tmp_path):
    registry = tmp_path / "jobs"
    dead = subprocess.Popen(["true"])
    dead.wait()
    with JobSlot(registry) as mine:
        assert mine.sample() == 1
        (registry / str(dead.pid)).write_text("1")  # a job that died without unregistering
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            (registry / str(sleeper.pid)).write_text(
                open(f"/proc/{sleeper.pid}/stat").read().rsplit(")", 1)[1].split()[19])
            assert mine.sample() == 2 and mine.peak == 2
            assert not (registry / str(dead.pid)).exists()
        finally:
            sleeper.kill()
            sleeper.wait()
        assert mine.sample() == 1 and mine.peak == 2
    assert not (registry / str(os.getpid())).exists()


def test_job_registry_is_private_and_planted_links_are_not_followed(tmp_path, monkeypatch):
    """Issue 31, 2: the registry was /tmp/bsb_hydra_jobs (mode 1777), written through symlinks: a
    local user could plant <registry>/<pid> -> any file, and a sweep run as root overwrote it. Now
    it lives in the user's runtime folder (0700), refused when that name is another user's or a
    symlink, and entries are written and read without following links."""
    from bsb_hydra import local_state

    monkeypatch.delenv("BSB_JOBS_DIR", raising=False)
    monkeypatch.delenv("BSB_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    base = tmp_path / f"bsb_hydra-{os.getuid()}"
    base.symlink_to(tmp_path / "elsewhere")  # planted before the first sweep
    with pytest.raises(local_state.PrivateDirError, match="symlink"):
        local_state.runtime_dir()
    base.unlink()
    if os.getuid() == 0:  # a folder of that name made by another user
        base.mkdir()
        os.chown(base, 65534, 65534)
        with pytest.raises(local_state.PrivateDirError, match="belongs to uid 65534"):
            local_state.runtime_dir()
        base.rmdir()
    with JobSlot() as slot:
        registry = slot.registry
        assert registry == base / "jobs" and (base.stat().st_mode & 0o777) == 0o700
        assert (registry.stat().st_mode & 0o777) == 0o700
    (registry / str(os.getpid())).symlink_to(victim)  # a link planted at the next entry's name
    with JobSlot() as slot:
        assert slot.sample() == 1
    assert victim.read_text() == "precious"
    (registry / "1").symlink_to(f"/proc/{os.getpid()}/stat")  # a link posing as a live job: not counted
    with JobSlot() as slot:
        assert slot.sample() == 1


def test_report_flags_cells_timed_beside_other_jobs():
    from bsb_hydra.report.render import table
    from bsb_hydra.report.runs import Cell

    def cell(n):
        return Cell("r", 0, {"model": "mlp", "quant": "fp32", "backend": "pytorch", "threads": "1",
                             "concurrent_jobs": str(n)}, {}, {"size_bytes": 1024.0, "latency_p50_ms_b1": 0.1})

    g = SimpleNamespace(cells=[cell(1), cell(2), cell(3)], batch_sizes=[1], emulated=True, classifier=True)
    _, rows = table(g)
    assert [r[0] for r in rows] == ["fp32 / pytorch", "fp32 / pytorch [timed beside 1 other job]",
                                    "fp32 / pytorch [timed beside 2 other jobs]"]
