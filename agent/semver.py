"""Semantic versions (https://semver.org, 2.0.0) for the node config version rule.

Decisions:
- One leading ``v`` or ``V`` is tolerated (``v1.2.3`` == ``1.2.3``): tags spelled that way are
  common and the intent is unambiguous. Nothing else outside semver 2.0.0 is accepted: no
  missing minor/patch, no leading zeros, no whitespace.
- Build metadata (``+build``) is kept but ignored for precedence, as section 10 requires, so
  ``1.0.0+a`` and ``1.0.0+b`` compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Tuple, Union

from .errors import InvalidArgument

# The regular expression suggested by semver.org (FAQ), with the optional leading "v" and
# [0-9] for \d: in Python \d also matches non-ASCII digits.
_SEMVER_RE = re.compile(
    r"[vV]?"
    r"(?P<major>0|[1-9][0-9]*)\.(?P<minor>0|[1-9][0-9]*)\.(?P<patch>0|[1-9][0-9]*)"
    r"(?:-(?P<prerelease>(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)

# Longer than any sane version; bounds the work a hostile string can cause.
MAX_VERSION_LENGTH = 256

# Precedence key of one prerelease identifier: numeric ones sort before alphanumeric ones
# (semver 11.4.3), numerically among themselves, alphanumerics in ASCII order.
_IdentifierKey = Tuple[int, int, str]


@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: Tuple[str, ...] = ()
    build: str = field(default="", compare=False)

    def precedence_key(self) -> tuple[int, int, int, int, tuple[_IdentifierKey, ...]]:
        """A tuple whose ordering is semver precedence (build metadata excluded).

        A release ranks above its prereleases (11.3), hence the 1/0 flag; tuples of identifier
        keys already order a shorter prefix below a longer one (11.4.4).
        """
        identifiers = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, identifiers)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def parse_semver(text: str) -> SemVer:
    """Parse ``text`` or raise InvalidArgument naming it."""
    if len(text) > MAX_VERSION_LENGTH:
        raise InvalidArgument(f"invalid semver: longer than {MAX_VERSION_LENGTH} characters")
    match = _SEMVER_RE.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"invalid semver {text!r}")
    prerelease = match.group("prerelease")
    return SemVer(
        major=int(match.group("major")),
        minor=int(match.group("minor")),
        patch=int(match.group("patch")),
        prerelease=tuple(prerelease.split(".")) if prerelease else (),
        build=match.group("build") or "",
    )


def compare_semver(left: Union[SemVer, str], right: Union[SemVer, str]) -> int:
    """-1, 0 or 1 as ``left`` has lower, equal or higher precedence than ``right``."""
    left_key = (parse_semver(left) if isinstance(left, str) else left).precedence_key()
    right_key = (parse_semver(right) if isinstance(right, str) else right).precedence_key()
    return (left_key > right_key) - (left_key < right_key)
