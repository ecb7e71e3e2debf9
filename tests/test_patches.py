"""patches/apply.py against the real accelerate 0.20.3 wheel (downloaded into a temp dir, skipped offline)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLY = ROOT / "patches" / "apply.py"
NPU_DOUBLE_DIR = Path(__file__).parent / "npu_double"
PATCHED_FILES = ("accelerate/accelerator.py", "accelerate/utils/dataclasses.py")


def run_apply(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(APPLY), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="session")
def accelerate_0203(tmp_path_factory) -> Path:
    """Pristine accelerate 0.20.3 source tree (the directory that contains accelerate/); never modified."""
    tmp = tmp_path_factory.mktemp("acc0203")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "accelerate==0.20.3"]
    try:
        proc = subprocess.run([*cmd, "-d", str(tmp)], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot download accelerate 0.20.3 (offline?): {e}")
    wheels = list(tmp.glob("accelerate-0.20.3-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot download accelerate 0.20.3 (offline?): {proc.stderr.strip().splitlines()[-1:]}")
    src = tmp / "src"
    with zipfile.ZipFile(wheels[0]) as whl:
        whl.extractall(src, [n for n in whl.namelist() if n.startswith("accelerate/")])
    return src


@pytest.fixture
def target(accelerate_0203, tmp_path) -> Path:
    """A fresh writable copy of the pristine tree, for one test."""
    return Path(shutil.copytree(accelerate_0203, tmp_path / "site"))


def test_check_reports_not_patched(target):
    res = run_apply("--check", "--target", str(target))
    assert res.returncode == 1 and "0.20.3" in res.stdout and "not patched" in res.stdout


def test_apply_then_check_patched_and_files_compile(target):
    res = run_apply("--apply", "--target", str(target))
    assert res.returncode == 0, res.stderr
    res = run_apply("--check", "--target", str(target))
    assert res.returncode == 0 and res.stdout.rstrip().endswith(": patched")
    dataclasses_src = (target / "accelerate/utils/dataclasses.py").read_text()
    accelerator_src = (target / "accelerate/accelerator.py").read_text()
    assert "    dynamic: bool = True\n" in dataclasses_src
    assert "self.scaler = torch.npu.amp.GradScaler(**kwargs)" in accelerator_src
    assert "self.scaler = torch.cuda.amp.GradScaler(**kwargs)" in accelerator_src  # the non-NPU branch stays
    for rel in PATCHED_FILES:
        py_compile.compile(str(target / rel), cfile=str(target / (rel + ".pyc")), doraise=True)


def test_apply_is_idempotent(target):
    assert run_apply("--apply", "--target", str(target)).returncode == 0
    once = tree_hashes(target)
    res = run_apply("--apply", "--target", str(target))
    assert res.returncode == 0 and "already patched" in res.stdout
    assert tree_hashes(target) == once


def test_revert_restores_bytes(accelerate_0203, target):
    assert run_apply("--apply", "--target", str(target)).returncode == 0
    assert tree_hashes(target) != tree_hashes(accelerate_0203)
    res = run_apply("--revert", "--target", str(target))
    assert res.returncode == 0 and "reverted" in res.stdout
    assert tree_hashes(target) == tree_hashes(accelerate_0203)  # also: no temp or backup files left behind
    res = run_apply("--revert", "--target", str(target))
    assert res.returncode == 0 and tree_hashes(target) == tree_hashes(accelerate_0203)


def test_installed_accelerate_needs_no_patch():
    spec = importlib.util.find_spec("accelerate")
    pkg = Path(list(spec.submodule_search_locations)[0])
    before = tree_hashes(pkg)
    for mode in ("--check", "--apply", "--revert"):
        res = run_apply(mode)
        assert res.returncode == 0 and "no patch needed" in res.stdout, (mode, res.stdout, res.stderr)
    assert tree_hashes(pkg) == before


def test_unknown_legacy_version_refused(target):
    init = target / "accelerate/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.20.3"', '__version__ = "0.19.0"'))
    before = tree_hashes(target)
    for mode in ("--check", "--apply", "--revert"):
        res = run_apply(mode, "--target", str(target))
        assert res.returncode == 2 and "0.19.0" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tree_hashes(target) == before


def test_mismatched_context_refused_nothing_written(target):
    path = target / "accelerate/accelerator.py"
    path.write_text(path.read_text().replace('("cuda", "mps")', '("cuda", "mps", "xpu")'))
    before = tree_hashes(target)
    res = run_apply("--apply", "--target", str(target))
    assert res.returncode == 2 and "do not match" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tree_hashes(target) == before  # dataclasses.py, whose context still matched, is untouched too


def test_unwritable_target_refused(target, monkeypatch, capsys):
    before = tree_hashes(target)
    if os.geteuid() == 0:  # root ignores permission bits: make apply.py's access check see a read-only tree
        spec = importlib.util.spec_from_file_location("patches_apply", APPLY)
        apply = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "patches_apply", apply)  # @dataclass looks its module up there
        spec.loader.exec_module(apply)
        monkeypatch.setattr(apply.os, "access", lambda path, mode: False)
        returncode, stderr = apply.main(["--apply", "--target", str(target)]), capsys.readouterr().err
    else:
        dirs = [target / "accelerate", target / "accelerate/utils"]
        for d in dirs:
            d.chmod(0o555)
        try:
            res = run_apply("--apply", "--target", str(target))
        finally:
            for d in dirs:
                d.chmod(0o755)
        returncode, stderr = res.returncode, res.stderr
    assert returncode == 2 and "not writable" in stderr and len(stderr.strip().splitlines()) == 1
    assert tree_hashes(target) == before


def test_not_an_accelerate_dir_refused(tmp_path):
    res = run_apply("--check", "--target", str(tmp_path))
    assert res.returncode == 2 and "contains accelerate/" in res.stderr


def test_patched_accelerator_builds_npu_scaler(target, tmp_path):
    """Behaviour, not text: the patched 0.20.3 Accelerator builds torch.npu.amp.GradScaler(dynamic=False) on the
    torch_npu contract double, and refuses dynamic=False without an NPU."""
    assert run_apply("--apply", "--target", str(target)).returncode == 0
    shim = tmp_path / "shim"
    shim.mkdir()
    if importlib.util.find_spec("pkg_resources") is None:  # 0.20.3 imports it; setuptools >= 81 dropped it
        (shim / "pkg_resources.py").write_text("from packaging.version import Version as parse_version\n")
    probe = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "import accelerate\n"
        "from accelerate import Accelerator\n"
        "from accelerate.utils import GradScalerKwargs\n"
        "assert accelerate.__version__ == '0.20.3', accelerate.__file__\n"
        "print('imported', flush=True)\n"
        # accelerate 0.20.3 cannot detect an NPU device itself; torch_npu's transfer_to_npu did that in the port.
        "Accelerator.device = property(lambda self: SimpleNamespace(type=sys.argv[1]))\n"
        "try:\n"
        "    acc = Accelerator(mixed_precision='fp16', kwargs_handlers=[GradScalerKwargs(dynamic=False)])\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    print(type(acc.scaler).__module__, acc.scaler._dynamic)\n"
    )
    (tmp_path / "probe.py").write_text(probe)

    def probe_run(device_type: str, *extra_path: Path) -> str:
        env = {**os.environ, "PYTHONPATH": ":".join(map(str, (target, shim, *extra_path)))}
        res = subprocess.run(
            [sys.executable, str(tmp_path / "probe.py"), device_type], capture_output=True, text=True, env=env
        )
        if not res.stdout.startswith("imported"):
            pytest.skip(f"accelerate 0.20.3 does not import with this torch: {res.stderr.strip().splitlines()[-1:]}")
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "torch_npu.npu.amp False" in probe_run("npu", NPU_DOUBLE_DIR)
    assert "refused: GradScalerKwargs(dynamic=False) needs torch.npu.amp.GradScaler" in probe_run("cuda")
