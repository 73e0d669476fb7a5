"""Crash-safe file output: directories and files are written beside their destination and renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_directory", "atomic_file", "build_once"]


def _tmp_prefix(destination: Path) -> str:
    return f".tmp-{destination.name}-"


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike, *, overwrite: bool = True, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `destination`; on success it replaces `destination` in one rename.

    A crash (exception, SIGKILL, power loss) inside the block leaves `destination` as it was: either absent or
    the previous complete version. The temporary sibling is removed on an exception; after SIGKILL it stays
    behind under a `.tmp-` name that is never mistaken for the real thing.

    Args:
        destination (`str` or `os.PathLike`):
            The directory to produce.
        overwrite (`bool`, *optional*, defaults to `True`):
            Replace an existing `destination`. With `False`, an existing one raises `FileExistsError`.
        keep (`tuple[str]`, *optional*, defaults to `()`):
            Entries of an existing `destination` carried over into the new version when the block succeeds
            (e.g. a fine-tune's `checkpoints/`), unless the block wrote an entry of the same name.

    Example:

    ```python
    >>> with atomic_directory("out/model") as tmp:
    ...     model.save_pretrained(tmp)
    ```
    """
    destination = Path(destination).expanduser().absolute()
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(destination), dir=destination.parent))
    try:
        yield tmp
        for name in keep:
            if (destination / name).exists() and not (tmp / name).exists():
                os.replace(destination / name, tmp / name)
        if destination.exists():
            # Two renames: the old version moves aside first, so there is no moment with a half-deleted dir.
            old = Path(tempfile.mkdtemp(prefix=f".old-{destination.name}-", dir=destination.parent))
            os.replace(destination, old / "x")
            os.replace(tmp, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(destination: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `destination` for writing; rename it into place when the block succeeds.

    Example:

    ```python
    >>> with atomic_file("results.jsonl") as handle:
    ...     handle.write("{}\\n")
    ```
    """
    destination = Path(destination).expanduser().absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{destination.name}-", dir=destination.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_once(
    target: str | os.PathLike, build: Callable[[Path], None], *, is_complete: Callable[[Path], bool], force: bool = False
) -> bool:
    """Build the directory `target` once, across threads and processes: under a file lock, into a temporary
    sibling renamed into place (`atomic_directory`). Used for the caches of converted models and corpora.

    Args:
        target (`str` or `os.PathLike`):
            The directory to produce.
        build (`Callable[[Path], None]`):
            Writes the directory's content into the folder it is given.
        is_complete (`Callable[[Path], bool]`):
            Whether `target` already holds a complete build (checked before and after taking the lock).
        force (`bool`, *optional*, defaults to `False`):
            Build again even when complete; the old version is replaced in one rename.

    Returns:
        `bool`: whether this call built it (`False` when a complete build was already there).

    Example:

    ```python
    >>> build_once(cache / "model", convert_into, is_complete=lambda d: (d / "config.json").is_file())
    True
    ```
    """
    from filelock import FileLock

    target = Path(target).expanduser().absolute()
    if not force and is_complete(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not force and is_complete(target):  # another process built it while this one waited
            return False
        # Holding the lock, a temporary sibling can only be left over from a build that was killed.
        for stale in target.parent.glob(_tmp_prefix(target) + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_directory(target) as tmp:
            build(tmp)
    return True
