"""One row of a pass/warn/fail table (`preflight`, `handin`): what was looked at, its verdict, one line why.

Standard library only: `handin`, which `writeup` imports, must not pull in the SageMaker SDK.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass(frozen=True)
class Finding:
    name: str
    status: str
    detail: str

    def record(self) -> dict[str, str]:
        """What `--json` prints for it, one JSON object per line."""
        return asdict(self)
