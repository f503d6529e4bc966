"""Trial storage locations: local folders and object-store URIs, joined, recorded and read back."""

import pytest

from dsearch.errors import UserError
from dsearch.search import artifacts as A

S3 = "s3://bkt/runs?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.parametrize("location, uri", [
    ("s3://b/p", True), ("gs://b/p", True), (S3, True),
    ("/abs/path", False), ("rel/path", False), ("file:///abs", False), ("C:/x", False), ("studies/c10/ray", False),
])
def test_is_uri(location, uri):
    assert A.is_uri(location) is uri


def test_join_keeps_the_query_of_a_uri_at_the_end():
    assert A.join(S3, "c10", "run-1/") == "s3://bkt/runs/c10/run-1?endpoint_override=127.0.0.1:9000&scheme=http"
    assert A.join("s3://bkt/", "x") == "s3://bkt/x"
    assert A.join("/a/b", "c", "d.pt") == "/a/b/c/d.pt"
    assert A.join("file:///a/b", "c") == "/a/b/c"
    assert A.join(S3) == "s3://bkt/runs?endpoint_override=127.0.0.1:9000&scheme=http"


def test_relative_to_root():
    assert A.relative_to_root("bkt/runs/c10", "bkt/runs/c10/run-1/t/checkpoint_000002") == "run-1/t/checkpoint_000002"
    assert A.relative_to_root("bkt/runs/", "bkt/runs") == ""
    with pytest.raises(ValueError):
        A.relative_to_root("bkt/runs", "bkt/runs2/x")


def test_a_checkpoint_in_an_object_store_is_recorded_as_a_uri_with_the_storage_query():
    storage = A.TrialStorage(A.join(S3, "c10"))
    assert storage.remote and storage.root == "bkt/runs/c10"
    assert storage.ray_storage()["storage_path"] == "bkt/runs/c10"
    assert type(storage.ray_storage()["storage_filesystem"]).__name__ == "S3FileSystem"
    assert storage.locate("bkt/runs/c10/run-1/t_0/checkpoint_000003/checkpoint.pt") == \
        "s3://bkt/runs/c10/run-1/t_0/checkpoint_000003/checkpoint.pt?endpoint_override=127.0.0.1:9000&scheme=http"


def test_a_local_storage_records_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = A.TrialStorage("studies/c10/ray")
    assert not storage.remote and storage.root == str(tmp_path / "studies/c10/ray")
    assert storage.ray_storage() == {"storage_path": str(tmp_path / "studies/c10/ray"), "storage_filesystem": None}
    assert storage.locate(f"{storage.root}/run-1/checkpoint.pt") == f"{storage.root}/run-1/checkpoint.pt"


def test_describe_drops_credentials_from_a_uri():
    assert A.describe("s3://key:secret@bkt/p?region=x") == "s3://bkt/p?region=x"
    assert A.describe(S3) == S3


def test_a_uri_pyarrow_cannot_open_is_a_user_error():
    with pytest.raises(UserError, match=r"nope://b/p: not a storage URI pyarrow can open"):
        A.TrialStorage("nope://b/p")


def test_local_files_round_trip_and_the_probe(tmp_path):
    storage = tmp_path / "store"
    marker = A.write_probe(str(storage))
    assert A.exists(marker) and A.probe(marker) is None
    A.copy_to_local(marker, tmp_path / "copy" / "m")
    assert (tmp_path / "copy" / "m").read_bytes() == A.read_bytes(marker)
    A.remove(marker)
    assert not A.exists(marker) and A.probe(marker) == "it is not there from this node"
    A.remove(marker)                       # twice: no error


def test_a_storage_path_that_cannot_be_written_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"^--storage-path .*file/x: can't write there \("):
        A.write_probe(str(tmp_path / "file" / "x"))
