"""The challenge seam: the plain-value task a solver is given and the solver protocol.

A solver sees plain values (`ChallengeTask`: identifier, token, key authorization), never
protocol types. `cleanup` must work after a failed or partial `present`, and is always called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from mamoru.config.model import Challenge

TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}\Z")  # base64url, RFC 8555 §8.1
PREFIX_HTTP01 = "/.well-known/acme-challenge/"


@dataclass(frozen=True)
class ChallengeTask:
    """What a challenge solver needs to know, as plain values (STYLE §3). `url` is the
    challenge's URL at the CA, carried for the protocol layer that answers it."""

    identifier: str
    type: str
    token: str
    key_authorization: str
    url: str = field(repr=False, default="")


class ChallengeSolver(Protocol):
    challenge_type: str

    def present(self, task: ChallengeTask) -> None:
        """Make the answer reachable by the CA. Raises ChallengeFailed when it cannot."""

    def cleanup(self, task: ChallengeTask) -> None:
        """Remove what present() made; never raises; safe after a failed present()."""


def solver_for(challenge: Challenge) -> ChallengeSolver:
    from mamoru.challenges.standalone import StandaloneSolver
    from mamoru.challenges.webroot import WebrootSolver

    if challenge.webroot:
        return WebrootSolver(challenge.webroot)
    assert challenge.standalone is not None
    return StandaloneSolver(*challenge.standalone)
