"""Writing files and folders safely: the one module every PeaPOD writer goes through.

* `atomic_path` / `atomic_write_text` / `atomic_write_json`: write to a temporary sibling, then rename, so a reader
  never sees a half-written file. The result has the mode a plain `open` would give (0666 minus the umask, so
  usually 0644), not the owner-only 0600 of `tempfile.mkstemp` or safetensors' own temporary files.
* `temporary_sibling_folder` + `replace_folder`: build a whole folder beside its destination, then swap it in; an
  existing destination is moved aside first and deleted only once the new one is in place.
* `remove_stale_temporaries`: a run killed with SIGKILL cannot clean up, so every writer first removes the
  leftovers of dead runs for the same destination. Temporary names carry the host and the owning process id
  (`.<name>.tmp-<host>-<pid>-<random>`), so a leftover is removed only when its process is gone on this host; a
  concurrent run's folder, or one written from another host on a shared disk, is never touched. A folder moved
  aside by a run killed mid-swap (`.<name>.old-<host>-<pid>`) is moved back when the destination is missing.
* `check_replaceable`: the guard of every `--overwrite`-style flag: only a folder the tool itself wrote
  (recognised by its marker file, holding nothing else) may be replaced; never the current working directory,
  a folder holding it, an input of the run, a folder holding an input or a folder inside one.

It lives in `datasets_scripts` because `training` already imports that package (and not the other way round), so
both can share it without a new top-level module. It imports only the standard library.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from configuration_peapod import PeaPODInputError

_HOST = socket.gethostname().replace("-", "_").replace(".", "_") or "host"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc/self/status, kernel >= 4.7).

    Elsewhere it must be set to be read: briefly to the strictest 0o077, so a file another thread creates in that
    instant is never more open than intended."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def default_mode(directory: bool = False) -> int:
    """The mode `open`/`mkdir` would give a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def give_default_permissions(path: str | os.PathLike) -> None:
    """Give a file (or a folder and everything in it) the modes a plain `open`/`mkdir` would have given them."""
    path = Path(path)
    os.chmod(path, default_mode(directory=path.is_dir()))
    if path.is_dir():
        for root, folders, files in os.walk(path):
            for name in folders:
                os.chmod(os.path.join(root, name), default_mode(directory=True))
            for name in files:
                os.chmod(os.path.join(root, name), default_mode())


def _temporary_name(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_is_dead(name: str, marker: str) -> bool:
    """Whether a temporary named `...<marker><host>-<pid>[-...]` belongs to a process of this host that is gone."""
    tail = name.split(marker, 1)[1] if marker in name else ""
    if not tail.startswith(f"{_HOST}-"):
        return False  # another host's (or an older naming scheme's): not ours to judge
    pid_text = tail[len(_HOST) + 1:].split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def remove_stale_temporaries(destination: str | os.PathLike) -> list[Path]:
    """Remove the temporary files/folders that dead runs left beside `destination`; returns what was removed.

    A folder moved aside by a run killed between the two renames of `replace_folder` is moved back to
    `destination` when `destination` is missing (the previous result comes back intact), else removed.
    """
    destination = Path(destination)
    parent = destination.parent
    if not parent.is_dir():
        return []
    removed = []
    for marker in (".tmp-", ".old-"):
        for leftover in sorted(parent.glob(f".{glob.escape(destination.name)}{marker}*")):
            if not _owner_is_dead(leftover.name, f".{destination.name}{marker}"):
                continue
            if marker == ".old-" and not destination.exists():
                os.replace(leftover, destination)
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s content to (by any writer: savefig, safetensors, ...); on success it
    gets default permissions and is renamed to `path`, on failure it is removed.

        with atomic_path("figure.png") as temporary:
            figure.savefig(temporary, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = _temporary_name(path)
    try:
        yield temporary
        os.chmod(temporary, default_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, with default permissions."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    """Write `obj` as JSON (UTF-8, non-ASCII kept) to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextmanager
def temporary_sibling_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside `destination` (same file system, so it can be renamed into place), with default
    permissions; removed if the block fails. Leftovers of dead runs for the same destination are removed first."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    temporary = _temporary_name(destination)
    temporary.mkdir(mode=default_mode(directory=True))
    os.chmod(temporary, default_mode(directory=True))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def replace_folder(temporary: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Rename `temporary` to `destination`; an existing destination is moved aside first and deleted only after."""
    temporary, destination = Path(temporary), Path(destination)
    backup = None
    if destination.exists():
        backup = destination.parent / f".{destination.name}.old-{_HOST}-{os.getpid()}"
        os.replace(destination, backup)
    try:
        os.replace(temporary, destination)
    except BaseException:
        if backup is not None:
            os.replace(backup, destination)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_own_temporary(name: str, allowed: set[str]) -> bool:
    """`.<allowed name>.tmp-...` / `.<allowed name>.old-...`: what this module's writers leave beside an entry."""
    return any(name.startswith((f".{entry}.tmp-", f".{entry}.old-")) for entry in allowed)


def check_replaceable(
    folder: str | os.PathLike, marker: str | tuple[str, ...], allowed: Iterable[str],
    inputs: Iterable[str | os.PathLike] = (), flag: str = "--output_dir",
) -> None:
    """Refuse (PeaPODInputError) to replace `folder` unless it is a folder this tool wrote.

    Allowed: a missing or empty folder, or one holding `marker` (or one of several) and only entries named in
    `allowed` or their temporaries (so a user's own file inside it is never deleted). Refused always: the current
    working directory or a folder holding it, and an existing folder that is one of `inputs` (the run's sources),
    holds one or lies inside one (a new folder may be created inside an input: nothing of it is replaced).
    """
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    allowed = set(allowed) | set(markers)
    path = Path(folder).resolve()
    if path.exists() and not path.is_dir():
        raise PeaPODInputError(f"{flag} {folder} exists and is not a folder")
    cwd = Path.cwd().resolve()
    if _is_within(cwd, path):
        raise PeaPODInputError(f"{flag} {folder} is the current working directory or holds it: refusing to replace it")
    for source in inputs:
        source_path = Path(source).resolve()
        if path.exists() and (_is_within(source_path, path) or _is_within(path, source_path)):
            raise PeaPODInputError(
                f"{flag} {folder} is, holds or lies inside the input {source}: refusing to replace it"
            )
    if not path.is_dir():
        return
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return
    if not set(markers) & set(entries):
        raise PeaPODInputError(
            f"{flag} {folder} is not empty and holds no {markers[0]}: it was not written by this tool, refusing to "
            "replace it (choose another folder or empty it yourself)"
        )
    foreign = [name for name in entries if name not in allowed and not _is_own_temporary(name, allowed)]
    if foreign:
        raise PeaPODInputError(
            f"{flag} {folder} holds files this tool did not write ({', '.join(foreign[:5])}): refusing to replace "
            "it (move them away first)"
        )
