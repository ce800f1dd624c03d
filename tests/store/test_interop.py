"""pybuild's store and archives against the real tools: skopeo, umoci, oci-image-tool and podman (no mocks).

The image is the busybox root filesystem fixtures/busybox-rootfs.py builds
from the host's busybox-static. A missing tool skips its tests with the
reason, except under CI=true, where it fails them. As root, every tool runs
in a private mount namespace with a tmpfs on /var/lib, so skopeo's and
podman's caches there vanish with the test; podman gets a throwaway root.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from store.compression import Compression
from store.content import read_blob
from store.descriptor import Descriptor, MediaType
from store.errors import (
    DigestMismatch,
    LimitExceeded,
    MalformedDocument,
    UnsafeArchiveEntry,
)
from store.image import parse_config, parse_manifest
from store.local import LocalContentStore
from store.reference import parse_reference
from store.rootfs import import_rootfs
from store.tags import TagStore
from store.transfer import load, save
from tests.support import external_tool

NAME = "docker.io/library/busybox:latest"
CREATED = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
TIMEOUT = 300


def _require(tool: str) -> str:
    return external_tool(tool, _PACKAGES.get(tool))


_PACKAGES = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "oci-image-tool": "oci-image-tool",
    "podman": "podman runc",
    "busybox": "busybox-static",
}


@functools.cache
def _private_var_lib() -> bool:
    """Whether tools can run in a private mount namespace with a tmpfs on /var/lib (needs root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*_WRAP, "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


_WRAP = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    'mount -t tmpfs pybuild-test /var/lib && exec "$@"',
    "sh",
]


def _run(argv: list[str], scratch: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "HOME": str(scratch),
        "XDG_DATA_HOME": str(scratch / "data"),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        "XDG_RUNTIME_DIR": str(scratch / "run"),
    }
    for key in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [*_WRAP, *argv] if _private_var_lib() else argv
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    return done


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def rootfs(busybox_rootfs: Path) -> Path:
    return busybox_rootfs


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> tuple[LocalContentStore, Descriptor]:
    store = LocalContentStore(tmp_path_factory.mktemp("store"))
    return store, import_rootfs(store, rootfs, "busybox:latest", created=CREATED)


@pytest.fixture(scope="module")
def docker_archive(tmp_path_factory: pytest.TempPathFactory, busybox: tuple[LocalContentStore, Descriptor]) -> Path:
    path = tmp_path_factory.mktemp("docker") / "busybox.tar"
    save(busybox[0], [(NAME, busybox[1])], path, format="docker")
    return path


def _layer_and_config(store: LocalContentStore, manifest: Descriptor) -> tuple[Descriptor, Descriptor]:
    parsed = parse_manifest(read_blob(store, manifest), manifest)
    return parsed.layers[0], parsed.config


# ---- skopeo reads what pybuild writes -------------------------------------------------


def test_skopeo_inspects_the_store_by_full_name(busybox: tuple[LocalContentStore, Descriptor], scratch: Path) -> None:
    skopeo = _require("skopeo")
    store, manifest = busybox
    layer, config = _layer_and_config(store, manifest)
    info = json.loads(_run([skopeo, "inspect", f"oci:{store.root}:{NAME}"], scratch).stdout)
    assert info["Digest"] == str(manifest.digest)
    assert info["Layers"] == [str(layer.digest)]
    assert (info["Os"], info["Created"]) == ("linux", "2024-01-01T00:00:00Z")
    raw = _run([skopeo, "inspect", "--raw", f"oci:{store.root}:{NAME}"], scratch).stdout
    assert raw.encode() == read_blob(store, manifest)
    raw_config = _run([skopeo, "inspect", "--config", "--raw", f"oci:{store.root}:{NAME}"], scratch).stdout
    assert raw_config.encode() == read_blob(store, config)


@pytest.mark.parametrize("suffix", ["", f":{NAME}"])
def test_skopeo_inspects_a_saved_oci_archive(
    busybox: tuple[LocalContentStore, Descriptor], tmp_path: Path, scratch: Path, suffix: str
) -> None:
    skopeo = _require("skopeo")
    store, manifest = busybox
    save(store, [(NAME, manifest)], tmp_path / "busybox.tar")
    info = json.loads(_run([skopeo, "inspect", f"oci-archive:{tmp_path / 'busybox.tar'}{suffix}"], scratch).stdout)
    assert info["Digest"] == str(manifest.digest)


def test_skopeo_inspects_a_saved_docker_archive(
    busybox: tuple[LocalContentStore, Descriptor], docker_archive: Path, rootfs: Path, scratch: Path
) -> None:
    skopeo = _require("skopeo")
    info = json.loads(_run([skopeo, "inspect", f"docker-archive:{docker_archive}"], scratch).stdout)
    diff_id = "sha256:" + hashlib.sha256(rootfs.read_bytes()).hexdigest()
    assert info["Layers"] == [diff_id]  # docker archive layers are the plain tars
    config = _run([skopeo, "inspect", "--config", "--raw", f"docker-archive:{docker_archive}"], scratch).stdout
    assert config.encode() == read_blob(busybox[0], _layer_and_config(*busybox)[1])


# ---- umoci unpacks a gzip export --------------------------------------------------------


def _describe(root: Path) -> dict[str, tuple[Any, ...]]:
    """path → (type, permission bits, uid, gid, link target or content hash)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = ""
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
            )
    return out


def _listing(rootfs: Path) -> dict[str, tuple[Any, ...]]:
    kinds = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.REGTYPE: stat.S_IFREG, tarfile.SYMTYPE: stat.S_IFLNK}
    out = {}
    with tarfile.open(rootfs) as tar:
        for member in tar:
            data = tar.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            what = member.linkname if member.issym() else hashlib.sha256(data).hexdigest() if data is not None else ""
            out[member.name] = (kinds[member.type], member.mode, member.uid, member.gid, what)
    return out


def test_umoci_unpacks_a_gzip_layout_to_the_files_put_in(
    busybox: tuple[LocalContentStore, Descriptor], rootfs: Path, tmp_path: Path, scratch: Path
) -> None:
    umoci = _require("umoci")
    store, manifest = busybox
    layout = tmp_path / "layout"
    save(store, [(NAME, manifest)], layout, format="oci-dir", compression=Compression.GZIP)
    _run([umoci, "unpack", "--image", f"{layout}:{NAME}", str(tmp_path / "bundle")], scratch)
    unpacked = _describe(tmp_path / "bundle" / "rootfs")
    assert unpacked == _listing(rootfs)
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_umoci_and_pybuild_unpack_the_same_tree(
    busybox: tuple[LocalContentStore, Descriptor], tmp_path: Path, scratch: Path
) -> None:
    umoci = _require("umoci")
    layer_module = pytest.importorskip("store.layer", reason="store.layer (apply_layer) is not written yet")
    store, manifest = busybox
    layout = tmp_path / "layout"
    save(store, [(NAME, manifest)], layout, format="oci-dir", compression=Compression.GZIP)
    _run([umoci, "unpack", "--image", f"{layout}:{NAME}", str(tmp_path / "bundle")], scratch)
    layer, config = _layer_and_config(store, manifest)
    ours = tmp_path / "ours"
    ours.mkdir()
    layer_module.apply_layer(store, layer, ours, diff_id=parse_config(read_blob(store, config)).diff_ids[0])
    assert _describe(ours) == _describe(tmp_path / "bundle" / "rootfs")


# ---- oci-image-tool validates pybuild's documents ----------------------------------------


def test_oci_image_tool_validates_the_documents(
    busybox: tuple[LocalContentStore, Descriptor], tmp_path: Path, scratch: Path
) -> None:
    tool = _require("oci-image-tool")
    store, manifest = busybox
    _, config = _layer_and_config(store, manifest)
    layout = tmp_path / "layout"
    save(store, [(NAME, manifest)], layout, format="oci-dir", compression=Compression.GZIP)
    gzip_manifest = TagStore(layout).get(NAME)
    for kind, path in [
        ("imageIndex", store.root / "index.json"),
        ("manifest", store.blob_path(manifest.digest)),  # its zstd layer type is newer than the tool; the shape is not
        ("config", store.blob_path(config.digest)),
        ("imageIndex", layout / "index.json"),
        ("manifest", layout / "blobs" / "sha256" / gzip_manifest.digest.hex),
    ]:
        assert "Validation succeeded" in _run([tool, "validate", "--type", kind, str(path)], scratch).stdout
    # The whole gzip layout, blobs and digests included (1.0.0-rc1 predates zstd, so not the store itself).
    _run([tool, "validate", "--type", "image", "--ref", f"name={NAME}", str(layout)], scratch)


# ---- skopeo's copies load back into pybuild unchanged -----------------------------------------


@pytest.mark.parametrize(
    ("transport", "compression"), [("oci", "gzip"), ("oci-archive", "gzip"), ("oci", "zstd"), ("oci-archive", "zstd")]
)
def test_skopeo_copies_load_back_with_identical_digests(
    busybox: tuple[LocalContentStore, Descriptor],
    docker_archive: Path,
    tmp_path: Path,
    scratch: Path,
    transport: str,
    compression: str,
) -> None:
    skopeo = _require("skopeo")
    dest = tmp_path / ("layout" if transport == "oci" else "copy.tar")
    name = f"{NAME.rsplit(':', 1)[0]}:copied"
    flags = ["--dest-compress-format", "zstd"] if compression == "zstd" else []
    _run([skopeo, "copy", "-q", *flags, f"docker-archive:{docker_archive}", f"{transport}:{dest}:{name}"], scratch)
    index, blobs = _read_layout(dest)
    (entry,) = index["manifests"]
    skopeo_manifest = json.loads(blobs(entry["digest"]))
    want_type = MediaType.LAYER_ZSTD if compression == "zstd" else MediaType.LAYER_GZIP
    assert skopeo_manifest["layers"][0]["mediaType"] == want_type

    target = LocalContentStore(tmp_path / "target")
    (loaded,) = load(target, dest)
    assert loaded.reference == parse_reference(name)
    assert str(loaded.descriptor.digest) == entry["digest"]
    ours = parse_manifest(read_blob(target, loaded.descriptor), loaded.descriptor)
    assert [(d.media_type, str(d.digest), d.size) for d in ours.layers] == [
        (d["mediaType"], d["digest"], d["size"]) for d in skopeo_manifest["layers"]
    ]
    assert str(ours.config.digest) == skopeo_manifest["config"]["digest"]
    original = parse_config(read_blob(busybox[0], _layer_and_config(*busybox)[1]))
    assert parse_config(read_blob(target, ours.config)).diff_ids == original.diff_ids
    info = json.loads(_run([skopeo, "inspect", f"oci:{target.root}:{name}"], scratch).stdout)
    assert info["Digest"] == entry["digest"]


def _read_layout(dest: Path) -> tuple[dict[str, Any], Any]:
    if dest.is_dir():
        return json.loads((dest / "index.json").read_text()), lambda digest: (
            dest / "blobs" / "sha256" / digest.split(":")[1]
        ).read_bytes()
    tar = tarfile.open(dest)  # noqa: SIM115  (kept open for the lambda; closed by the GC)
    names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    return json.loads(tar.extractfile(names["index.json"]).read()), lambda digest: tar.extractfile(
        names[f"blobs/sha256/{digest.split(':')[1]}"]
    ).read()  # type: ignore[union-attr]


# ---- podman loads and runs pybuild's archives ------------------------------------------------


@pytest.fixture
def podman(tmp_path: Path, scratch: Path) -> Any:
    """`podman` with a throwaway root, run root and tmpdir under tmp_path (vfs: no mounts to leave)."""
    tool = _require("podman")
    _require("runc")
    home = tmp_path / "podman"
    for part in ("root", "tmp"):
        (home / part).mkdir(parents=True)
    runroot = Path(tempfile.mkdtemp(prefix="pybuild-podman-", dir="/tmp"))  # podman wants it under 50 characters
    base = [
        tool,
        "--root",
        str(home / "root"),
        "--runroot",
        str(runroot),
        "--tmpdir",
        str(home / "tmp"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
    ]
    try:
        yield lambda *args: _run([*base, *args], home / "tmp")
        _run([*base, "rmi", "--all", "--force"], home / "tmp")
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


# podman's default runtime (crun) refuses this machine's hybrid cgroups and its RLIMIT_NOFILE (../shared/bench/README.md)
PODMAN_RUN = ("run", "--rm", "--runtime", "runc", "--network", "none",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")  # fmt: skip


def test_podman_loads_and_runs_the_docker_archive(docker_archive: Path, podman: Any) -> None:
    assert f"Loaded image: {NAME}" in podman("load", "-i", str(docker_archive)).stdout
    out = podman(
        *PODMAN_RUN,
        NAME,
        "/bin/busybox",
        "echo",
        "hello",
    )
    assert out.stdout == "hello\n"


def test_podman_loads_the_oci_archive_with_zstd_layers(
    busybox: tuple[LocalContentStore, Descriptor], tmp_path: Path, podman: Any
) -> None:
    store, manifest = busybox
    save(store, [(NAME, manifest)], tmp_path / "busybox.tar")
    assert f"Loaded image: {NAME}" in podman("load", "-i", str(tmp_path / "busybox.tar")).stdout
    out = podman(
        *PODMAN_RUN,
        NAME,
        "/bin/sh",
        "-c",
        "cat /etc/passwd | head -1",
    )
    assert out.stdout == "root:x:0:0:root:/root:/bin/sh\n"


# ---- hostile variants of an archive skopeo made ---------------------------------------------


def _skopeo_archive(docker_archive: Path, dest: Path, scratch: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    _run([_require("skopeo"), "copy", "-q", f"docker-archive:{docker_archive}", f"oci-archive:{dest}:{NAME}"], scratch)
    with tarfile.open(dest) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _largest(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> int:
    return max(range(len(members)), key=lambda i: members[i][0].size)


@pytest.mark.parametrize(
    ("case", "error", "pattern"),
    [
        ("dotdot", UnsafeArchiveEntry, "unsafe member name '../evil'"),
        ("absolute", UnsafeArchiveEntry, "unsafe member name '/evil'"),
        ("missing-blob", MalformedDocument, "layer 0 sha256:[0-9a-f]{64}: blob missing from"),
        ("wrong-bytes", DigestMismatch, "member blobs/sha256/[0-9a-f]{64}: content is sha256:"),
        ("truncated", MalformedDocument, "without an end-of-archive marker in entry 'blobs/sha256/"),
        ("big-manifest", LimitExceeded, "bytes is more than the 4194304 allowed"),
    ],
)
def test_hostile_variants_of_a_skopeo_archive_are_refused(
    docker_archive: Path, tmp_path: Path, scratch: Path, case: str, error: type[Exception], pattern: str
) -> None:
    members = _skopeo_archive(docker_archive, tmp_path / "skopeo.tar", scratch)
    big = _largest(members)  # the layer
    if case == "dotdot":
        members.append((tarfile.TarInfo("../evil"), b"x"))
    elif case == "absolute":
        members.insert(0, (tarfile.TarInfo("/evil"), b"x"))
    elif case == "missing-blob":
        del members[big]
    elif case == "wrong-bytes":
        info, data = members[big]
        members[big] = (info, data[:100] + bytes([data[100] ^ 1]) + data[101:])  # type: ignore[index]
    elif case == "big-manifest":
        manifest = {
            "schemaVersion": 2,
            "mediaType": MediaType.MANIFEST,
            "config": {},
            "layers": [],
            "annotations": {"pad": "x" * (5 << 20)},
        }
        data = json.dumps(manifest).encode()
        digest = hashlib.sha256(data).hexdigest()
        members.insert(0, (tarfile.TarInfo(f"blobs/sha256/{digest}"), data))
        at = next(i for i, (m, _) in enumerate(members) if m.name.endswith("index.json"))
        entry = {"mediaType": MediaType.MANIFEST, "digest": f"sha256:{digest}", "size": len(data)}
        members[at] = (members[at][0], json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode())
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    if case == "truncated":
        cut = path.read_bytes()
        start = cut.index(members[big][0].name.encode())
        path.write_bytes(cut[: start + 4096])
    target = LocalContentStore(tmp_path / "target")
    TagStore(target.root)
    before = sorted((str(p.relative_to(target.root)), p.read_bytes()) for p in target.root.rglob("*") if p.is_file())
    with pytest.raises(error, match=pattern) as caught:
        load(target, path)
    assert "\n" not in str(caught.value)
    after = sorted((str(p.relative_to(target.root)), p.read_bytes()) for p in target.root.rglob("*") if p.is_file())
    assert after == before
    assert sorted(p.name for p in target.root.iterdir()) == [
        "blobs",
        "index.json",
        "index.json.lock",
        "ingest",
        "oci-layout",
    ]
