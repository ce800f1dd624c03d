"""Cache keys: pinned literal keys (an accidental format change fails here), sensitivity, and explanations."""

from __future__ import annotations

import pytest

from builder.cachekey import (
    CACHE_KEY_VERSION,
    canonical,
    changes,
    file_changes,
    step_key,
)

RUN_OP = {
    "kind": "run",
    "argv": ["/bin/sh", "-c", "make"],
    "env": ["PATH=/bin", "V=1"],
    "cwd": "/src",
    "user": "",
    "network": "host",
    "mounts": [],
    "epoch": None,
}
PINNED_FROM = "sha256:89b6ded289786c491c47b26b6f5146e720c348a31093c550e1b0ce3c95fb1b88"
PINNED_RUN = "sha256:e00e8d79422fd371554339277c79d7e5f88b67de96d680847db2c3009870ca3a"


def test_pinned_keys() -> None:
    # Changing these means every user's cache misses once: bump CACHE_KEY_VERSION on purpose, then re-pin.
    assert CACHE_KEY_VERSION == 1
    assert step_key(None, {"kind": "from", "image": "sha256:" + "a" * 64}) == PINNED_FROM
    assert step_key(PINNED_FROM, RUN_OP) == PINNED_RUN


def test_key_is_canonical_json_of_version_parent_and_op() -> None:
    import hashlib

    text = canonical({"v": CACHE_KEY_VERSION, "parent": None, "op": RUN_OP})
    assert text.startswith('{"op":{"argv":["/bin/sh","-c","make"]')
    assert step_key(None, RUN_OP) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("field", "value"),
    [("argv", ["/bin/sh", "-c", "make all"]), ("env", ["PATH=/bin", "V=2"]), ("cwd", "/"), ("user", "1000"),
     ("network", "none"), ("mounts", [{"type": "cache", "target": "/c", "id": "/c", "ro": False}]), ("epoch", 0)],
)
def test_every_field_changes_the_key(field: str, value: object) -> None:
    assert step_key(None, RUN_OP) != step_key(None, {**RUN_OP, field: value})


def test_parent_changes_the_key_and_field_order_does_not() -> None:
    assert step_key(None, RUN_OP) != step_key("sha256:" + "0" * 64, RUN_OP)
    assert step_key(None, RUN_OP) == step_key(None, dict(reversed(list(RUN_OP.items()))))


def test_changes_name_fields_env_values_and_files() -> None:
    after = {**RUN_OP, "argv": ["/bin/sh", "-c", "make all"], "env": ["PATH=/bin", "V=2", "NEW=x"]}
    assert changes(RUN_OP, after) == [
        'argv: ["/bin/sh","-c","make"] -> ["/bin/sh","-c","make all"]',
        "env NEW added: x",
        "env V: 1 -> 2",
    ]
    copy_before = {"kind": "copy", "content": "sha256:1"}
    copy_after = {"kind": "copy", "content": "sha256:2"}
    assert changes(copy_before, copy_after, files_before={"a": "1", "b": "2"}, files_after={"a": "9", "c": "3"}) == [
        "file changed: a",
        "file added: c",
        "file removed: b",
    ]


def test_file_changes_are_capped() -> None:
    out = file_changes({}, {f"f{i}": "x" for i in range(9)}, limit=3)
    assert out == ["file added: f0", "file added: f1", "file added: f2", "and 6 more file change(s)"]
