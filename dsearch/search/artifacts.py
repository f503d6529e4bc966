"""Where trials keep their folders and checkpoints: a local folder or an object-store URI.

A location is either a path (a local folder, or a shared mount that every node sees at the same path)
or a URI as pyarrow takes it: `s3://BUCKET/PATH`, `gs://BUCKET/PATH`, with options in the query string
(`s3://BUCKET/PATH?endpoint_override=HOST:PORT&scheme=http` for an S3-compatible server). Checkpoints
are recorded in the study as locations of the same form, the storage URI's query kept, so any machine
with access to the store reads them back; the credentials come from each machine's environment.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserError

if TYPE_CHECKING:
    import pyarrow.fs

PROBE_PREFIX = ".dsearch-probe-"


def is_uri(location: str) -> bool:
    """True for scheme://… other than file:// (a one-letter scheme is a Windows drive, not a URI)."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1 and scheme != "file" and "://" in str(location)


def local_path(location: str) -> Path:
    """The local path of a non-URI location (file:///x is /x)."""
    s = str(location)
    return Path(urlsplit(s).path if s.startswith("file://") else s)


def join(location: str, *parts: str) -> str:
    """location/parts…, the query string of a URI kept at the end."""
    rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not is_uri(location):
        return str(local_path(location) / rel) if rel else str(local_path(location))
    u = urlsplit(location)
    path = u.path.rstrip("/") + ("/" + rel if rel else "")
    return urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def filesystem(location: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """(pyarrow filesystem, path inside it) of a location; UserError if pyarrow can't make sense of it."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(local_path(location).resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except Exception as e:  # ArrowInvalid / ArrowNotImplemented / OSError for a bad or unsupported URI
        raise UserError(f"{describe(location)}: not a storage URI pyarrow can open ({_first_line(e)}); expected "
                        "s3://BUCKET/PATH, gs://BUCKET/PATH or a local folder") from None
    return fs, path.rstrip("/")


def relative_to_root(root_path: str, path: str) -> str:
    """`path` (as a filesystem reports it) relative to the storage root's path inside the same filesystem."""
    root, p = root_path.rstrip("/"), path.rstrip("/")
    if p == root:
        return ""
    if not p.startswith(root + "/"):
        raise ValueError(f"{path} is not inside the storage root {root_path}")
    return p[len(root) + 1:]


class TrialStorage:
    """The storage of one search: Ray's storage_path (+ filesystem for a URI), and checkpoint locations."""

    @classmethod
    def of_study(cls, study_dir: str | Path) -> "TrialStorage":
        """The default: the study folder's ray/ (right on one machine; a cluster needs a --storage-path)."""
        return cls(Path(study_dir) / "ray")

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        self.remote = is_uri(self.location)
        self.fs, self.root = filesystem(self.location)

    def ray_storage(self) -> dict:
        """RunConfig keyword arguments: the local folder, or the path inside the object store and its filesystem."""
        return {"storage_path": self.root, "storage_filesystem": self.fs if self.remote else None}

    def locate(self, path: str) -> str:
        """The location to record for `path`, as Ray reports it (a path inside this storage's filesystem)."""
        return join(self.location, relative_to_root(self.root, path)) if self.remote else path


def exists(location: str) -> bool:
    """Whether a file is at location (False, not an error, when the store can't be reached)."""
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem(location)
        return fs.get_file_info(path).type == pafs.FileType.File
    except (OSError, UserError):
        return False


def read_bytes(location: str) -> bytes:
    """The whole file at location; OSError (FileNotFoundError when absent) otherwise."""
    if not is_uri(location):
        return local_path(location).read_bytes()
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def copy_to_local(location: str, dest: Path) -> None:
    """Copy the file at location to the local file dest (its folder is made)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(read_bytes(location))
    tmp.replace(dest)


def write_probe(location: str) -> str:
    """Make the storage folder and write a small marker file in it, from this machine; returns its location.

    UserError if the folder can't be made or written (a read-only mount, wrong credentials, no such bucket).
    """
    name = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    fs, root = filesystem(location)
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(b"dsearch storage probe\n")
    except Exception as e:  # OSError from the local disk or the object store's client
        raise UserError(f"--storage-path {describe(location)}: can't write there ({_first_line(e)})") from None
    return join(location, name)


def remove(location: str) -> None:
    """Delete the file at location if it is there (errors ignored: a leftover marker is harmless)."""
    try:
        fs, path = filesystem(location)
        fs.delete_file(path)
    except Exception:
        pass


def probe(location: str) -> str | None:
    """Run on each node: None if the file at location can be read here, else why not (one line)."""
    try:
        read_bytes(location)
        return None
    except FileNotFoundError:
        return "it is not there from this node"
    except Exception as e:  # the store's client: network, credentials, a missing module for the scheme
        return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def describe(location: str) -> str:
    """The location as shown to users: an absolute path, or the URI without any user:password@."""
    if not is_uri(location):
        return os.path.abspath(local_path(location))
    u = urlsplit(location)
    netloc = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, ""))
