"""Image references: Docker's normalisation and grammar, as tables of inputs and what they become."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.digest import Digest
from store.errors import InvalidReference
from store.reference import Reference, parse_reference

HEX = "a" * 64
SHA = f"sha256:{HEX}"

# (input, full normalised form, familiar form): mostly distribution/reference's own examples.
VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io/library/busybox:x", "busybox:x"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("docker.io/library/a/b:t", "docker.io/library/a/b:t", "library/a/b:t"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
    ("quay.io/org/app:v1.2.3-rc_1", "quay.io/org/app:v1.2.3-rc_1", "quay.io/org/app:v1.2.3-rc_1"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/x:t", "[::1]:5000/x:t", "[::1]:5000/x:t"),
    ("Registry.Example.com/x", "Registry.Example.com/x:latest", "Registry.Example.com/x:latest"),
    ("a__b/c--d/e.f_g", "docker.io/a__b/c--d/e.f_g:latest", "a__b/c--d/e.f_g:latest"),
    (f"busybox@{SHA}", f"docker.io/library/busybox@{SHA}", f"busybox@{SHA}"),
    (f"busybox:1@{SHA}", f"docker.io/library/busybox:1@{SHA}", f"busybox:1@{SHA}"),
    (f"r.io/x@sha512:{'b' * 128}", f"r.io/x@sha512:{'b' * 128}", f"r.io/x@sha512:{'b' * 128}"),
    ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128, "busybox:" + "t" * 128),
    ("busybox:_x", "docker.io/library/busybox:_x", "busybox:_x"),
]

# (input, a fragment the one-line message must contain)
INVALID = [
    ("", "empty"),
    ("Busybox", "must be lower-case"),
    ("user/App", "must be lower-case"),
    (HEX, "image id"),
    ("busybox:", "tag ''"),
    ("busybox:.x", "tag '.x'"),
    ("busybox:-x", "tag '-x'"),
    ("busybox:" + "t" * 129, "at most 128"),
    ("busybox:a:b", "tag 'a:b'"),
    ("busybox:tag/x", "tag"),
    ("a//b", "repository name"),
    ("x/../y", "repository name"),
    ("/abs", "repository name"),
    ("a b", "repository name"),
    ("-a", "repository name"),
    ("a-", "repository name"),
    ("a..b", "repository name"),
    ("a___b", "repository name"),
    ("café", "repository name"),
    ("busybox\n", "repository name"),
    ("localhost:50a/x", "registry"),
    ("-bad.io/x", "registry"),
    ("busybox@sha256:abc", "hex must be 64"),
    (f"busybox@sha256:{'A' * 64}", "hex must be 64"),
    (f"busybox@md5:{HEX[:32]}", "algorithm 'md5'"),
    (f"busybox@{SHA}/x", "hex must be 64"),
    (f"busybox@sha256+b64u:{HEX}", "algorithm"),
    ("busybox@", "expected algorithm:hex"),
    ("x" * 2000, "longer than"),
]


@pytest.mark.parametrize(("text", "full", "familiar"), VALID, ids=[v[0][:40] for v in VALID])
def test_valid_references_normalise_like_docker(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert parse_reference(full) == ref
    assert parse_reference(familiar) == ref


@pytest.mark.parametrize(("text", "fragment"), INVALID, ids=[repr(v[0][:30]) for v in INVALID])
def test_invalid_references_are_refused_with_one_line(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith("invalid reference")


def test_invalid_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        parse_reference("UPPER")


def test_parts_of_a_reference() -> None:
    ref = parse_reference(f"localhost:5000/a/b:t@{SHA}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "a/b", "t", Digest.parse(SHA))
    assert ref.name == "localhost:5000/a/b"
    assert ref.familiar_name == "localhost:5000/a/b"
    assert parse_reference("busybox").familiar_name == "busybox"


def test_digest_only_reference_has_no_tag() -> None:
    ref = parse_reference(f"busybox@{SHA}")
    assert ref.tag is None
    assert ref.digest == Digest("sha256", HEX)


def test_name_length_limit_is_dockers_255() -> None:
    name = "docker.io/u/" + "a" * (255 - len("docker.io/u/"))
    assert parse_reference(name + ":" + "t" * 128).name == name  # the limit is on the name, as in Docker
    with pytest.raises(InvalidReference, match="longer than 255"):
        parse_reference(name + "b")
    with pytest.raises(InvalidReference, match="longer than 255"):
        parse_reference("a" * 250)  # 'docker.io/library/' makes it too long


def test_with_tag() -> None:
    ref = parse_reference(f"busybox:1@{SHA}").with_tag("2")
    assert str(ref) == "docker.io/library/busybox:2"
    with pytest.raises(InvalidReference, match="invalid tag"):
        ref.with_tag("bad tag")


def test_references_are_values() -> None:
    a, b = parse_reference("busybox"), parse_reference("docker.io/library/busybox:latest")
    assert a == b and hash(a) == hash(b)
    assert isinstance(a, Reference)
    assert min([parse_reference("b"), parse_reference("a")]).path == "library/a"


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_first = st.from_regex(r"[a-z0-9]{1,8}(?:[_-][a-z0-9]{1,8}){0,2}", fullmatch=True)  # no '.': not a registry
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    domain=st.sampled_from(["", "localhost/", "localhost:5000/", "registry.example.com/", "10.0.0.1:443/"]),
    first=_first,
    path=st.lists(_component, max_size=2),
    tag=st.none() | _tag,
)
def test_full_and_familiar_forms_parse_back(domain: str, first: str, path: list[str], tag: str | None) -> None:
    text = domain + "/".join([first, *path]) + (f":{tag}" if tag else "")
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref
    assert ref.tag == (tag or "latest")
