"""Image references (`busybox`, `localhost:5000/a/b:t`, `name@sha256:…`), parsed and normalised as Docker does.

distribution/reference's grammar, and Docker's normalisation: no registry means `docker.io`, a one-part
Docker Hub name gains `library/`, no tag and no digest means `:latest`. Digests are those
`store.digest.Digest` accepts. No filesystem or network access.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .digest import Digest
from .errors import InvalidDigest, InvalidReference

__all__ = ["DEFAULT_DOMAIN", "DEFAULT_TAG", "MAX_NAME_LENGTH", "Reference", "parse_reference"]

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255  # Docker's NameTotalLengthMax: domain + "/" + path
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_MAX_INPUT = 1024  # longer input cannot be valid; refuse it before any regex runs

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")


class Reference(NamedTuple):
    """A normalised reference: `str()` is the full form, `familiar` the short one for display.

    At least one of `tag` and `digest` is set; both may be (`name:tag@digest`).
    """

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def name(self) -> str:
        """The repository with its registry: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as `docker` prints it: `busybox`, `user/app`, `localhost:5000/a/b`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(_OFFICIAL_PREFIX) and "/" not in path[len(_OFFICIAL_PREFIX) :]:
            path = path[len(_OFFICIAL_PREFIX) :]
        return path

    @property
    def familiar(self) -> str:
        """The short form for display: `busybox:latest`, `quay.io/a/b@sha256:…`."""
        return self.familiar_name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """The same repository with `tag` and no digest."""
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag[:140]!r}: use letters, digits, '_', '.' and '-' (at most 128)")
        return Reference(self.domain, self.path, tag, None)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str) -> Reference:
    """Parse and normalise `text`; InvalidReference (one line, naming the problem) if it is not one."""
    if not isinstance(text, str):
        raise InvalidReference(f"invalid reference {text!r}: not a string")
    if not text:
        raise InvalidReference("invalid reference '': empty")
    if len(text) > _MAX_INPUT:
        raise InvalidReference(f"invalid reference {text[:60]!r}…: longer than {_MAX_INPUT} characters")
    if _IDENTIFIER_RE.fullmatch(text):
        raise InvalidReference(f"invalid reference {text!r}: a 64-character hex string is an image id, not a name")
    rest, at, digest_text = text.partition("@")
    digest = _parse_digest(text, digest_text) if at else None
    domain, remainder = _split_domain(rest)
    path, colon, tag = remainder.partition(":")
    if colon and not _TAG_RE.fullmatch(tag):
        raise InvalidReference(
            f"invalid reference {text!r}: tag {tag[:140]!r} must be letters, digits, '_', '.' or '-' (at most 128,"
            " not starting with '.' or '-')"
        )
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidReference(f"invalid reference {text!r}: registry {domain!r} is not a host name[:port]")
    if path.lower() != path:
        raise InvalidReference(f"invalid reference {text!r}: repository name {path!r} must be lower-case")
    if not _PATH_RE.fullmatch(path):
        raise InvalidReference(
            f"invalid reference {text!r}: repository name {path!r} must be '/'-separated components of a-z, 0-9"
            " joined by '.', '_', '__' or '-'"
        )
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(f"invalid reference {text[:60]!r}…: repository name longer than {MAX_NAME_LENGTH}")
    if not colon:
        tag = DEFAULT_TAG if digest is None else None
    return Reference(domain, path, tag, digest)


def _parse_digest(text: str, digest_text: str) -> Digest:
    try:
        return Digest.parse(digest_text)
    except InvalidDigest as exc:
        raise InvalidReference(f"invalid reference {text[:140]!r}: {exc}") from None


def _split_domain(name: str) -> tuple[str, str]:
    # Docker's rule: the first component is a registry only if it looks like a
    # host (has '.' or ':', or is localhost) or has upper-case letters.
    first, slash, rest = name.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    return domain, remainder
