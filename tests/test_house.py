"""House rules that can fail: device code in one module, file sizes, every public URL listed."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_CODE = re.compile(r"\btorch_npu\b|\btorch\.npu\b|\btorch\.cuda\b")
URL = re.compile(r"https?://[^\s\"'<>)\]`]+")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def code_only(source: str) -> str:
    """Python source with comments and string literals (docstrings included) removed."""
    kept = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            kept.append(tok.string)
    return " ".join(kept).replace(" . ", ".").replace(" .", ".").replace(". ", ".")


def test_code_only_sees_code_and_not_comments():
    assert DEVICE_CODE.search(code_only("import torch\nx = torch.cuda.is_available()\n"))
    assert not DEVICE_CODE.search(code_only('# torch.cuda\n\'torch_npu\'\n"""torch.npu"""\n'))


def test_device_code_only_in_devices_module():
    """STYLE.md B2: only src/diffusers_npu/devices.py names torch_npu / torch.npu / torch.cuda in code."""
    offenders = []
    for path in tracked("src/*.py", "examples/*.py", "test_infer/*.py", "bench/*.py"):
        if path.relative_to(ROOT).as_posix() == "src/diffusers_npu/devices.py":
            continue
        if DEVICE_CODE.search(code_only(path.read_text())):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"device code outside devices.py: {offenders}"


LIMITS = {"src": 800, "examples": 150, "test_infer": 150, "test": 30}


def test_file_sizes():
    over = []
    for path in tracked("src/*.py", "examples/*.py", "test_infer/*.py", "test/*.sh"):
        top = path.relative_to(ROOT).parts[0]
        limit = LIMITS[top]
        if path.name == "_common.sh":
            continue
        n = len(path.read_text().splitlines())
        if n > limit:
            over.append(f"{path.relative_to(ROOT)}: {n} > {limit}")
    assert not over, over


def test_function_sizes():
    over = []
    for path in tracked("src/*.py", "examples/*.py", "test_infer/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 150:
                    over.append(f"{path.relative_to(ROOT)}:{node.name} {n} lines")
    assert not over, over


def listed_urls() -> list[str]:
    text = (ROOT / "public_address_statement.md").read_text()
    return [u.rstrip(".,") for u in URL.findall(text)]


def test_every_public_url_is_listed():
    """public_address_statement.md lists every URL the code, scripts and docs reference."""
    listed = set(listed_urls())
    missing = {}
    for path in tracked():
        if path.name == "public_address_statement.md" or path.suffix in {".png", ".jpg", ".npy", ".safetensors"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for url in URL.findall(text):
            url = url.rstrip(".,;:")
            if url not in listed and not any(url.startswith(prefix) for prefix in listed if prefix.endswith("/")):
                missing.setdefault(url, str(path.relative_to(ROOT)))
    assert not missing, f"URLs missing from public_address_statement.md: {missing}"


def test_statement_lists_no_dead_entries():
    """Every listed URL still appears somewhere, so the statement stays true in both directions."""
    corpus = "\n".join(p.read_text(errors="ignore") for p in tracked() if p.name != "public_address_statement.md")
    dead = [u for u in listed_urls() if u not in corpus and not u.endswith("/")]
    assert not dead, f"listed but no longer referenced: {dead}"
