"""``diffusers-npu compare``: metrics against hand-computed values, folders matched by name, exit codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from diffusers_npu import compare
from diffusers_npu.cli import main
from diffusers_npu.errors import UserError


def image(seed: int = 0, shape=(32, 48, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 236, size=shape, dtype=np.uint8)  # headroom so +-10 never clips


def save(path, array):
    Image.fromarray(array).save(path)
    return path


def test_identical_images_give_zero_error(tmp_path, capsys):
    a = save(tmp_path / "a.png", image())
    b = save(tmp_path / "b.png", image())
    m = compare.compare_images(a, b)
    assert m.mae == 0 and m.max_error == 0 and m.psnr_db == math.inf and m.ssim == pytest.approx(1.0)
    assert main(["compare", str(a), str(b)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_known_perturbation_gives_exact_mae_and_psnr():
    base = image()
    shifted = base.copy()
    shifted[::2] += 3  # every other row +3: |err| = 3 on half the pixels, 0 elsewhere
    shifted[0, 0, 0] += 7  # one value off by 10
    m = compare.compare_arrays(base, shifted)
    n = base.size
    errors = np.zeros(n)
    errors[: shifted[::2].size] = 3
    errors[0] = 10
    assert m.mae == pytest.approx(errors.mean())
    assert m.max_error == 10
    assert m.psnr_db == pytest.approx(10 * math.log10(255**2 / np.mean(errors**2)))
    assert 0 < m.ssim < 1


def test_threshold_decides_the_exit_status(tmp_path, capsys):
    a = save(tmp_path / "a.png", image())
    b = save(tmp_path / "b.png", (image() + 6).astype(np.uint8))  # MAE exactly 6
    assert compare.compare_images(a, b).mae == pytest.approx(6.0)
    assert main(["compare", str(a), str(b)]) == compare.EXIT_OVER_THRESHOLD  # default 5: MindONE's acceptance
    assert "FAIL" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--threshold", "6.5"]) == 0


def test_folders_are_matched_by_name(tmp_path, capsys):
    left, right = tmp_path / "ms", tmp_path / "pt"
    left.mkdir(), right.mkdir()
    for i in range(3):
        save(left / f"{i}.png", image(i))
        save(right / f"{i}.png", (image(i) + (1 if i == 2 else 0)).astype(np.uint8))
    (left / "notes.txt").write_text("ignored")
    assert main(["compare", str(left), str(right)]) == 0
    out = capsys.readouterr().out
    assert "pairs=3" in out and "2.png: mae=1.0000" in out and "mae_max=1.0000 (2.png)" in out
    save(right / "extra.png", image(9))
    with pytest.raises(UserError, match="only one folder: extra.png"):
        compare.pair_up(left, right)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    a = save(tmp_path / "a.png", image())
    small = save(tmp_path / "s.png", image(shape=(8, 8, 3)))
    with pytest.raises(UserError, match="sizes differ"):
        compare.compare_images(a, small)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(a), str(tmp_path / "bad.png")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: cannot read image")
    with pytest.raises(UserError, match="does not exist"):
        compare.pair_up(a, tmp_path / "missing.png")
    with pytest.raises(UserError, match="not a file and a folder"):
        compare.pair_up(a, tmp_path)


def test_tiny_images_still_compare():
    m = compare.compare_arrays(image(shape=(2, 2, 3)), image(shape=(2, 2, 3)))
    assert m.mae == 0 and math.isnan(m.ssim)
