"""How the demos talk to a newcomer: numbered steps, one line of why each, an outcome for every
step, and an honest summary at the end (CLI output, so print, not logging).

Every step ends in exactly one of ``=> ok``, ``=> FAILED: ...`` or ``=> skipped: ...``; the
summary lists what failed and what was skipped and why, and the exit code is 0 only when every
step that was tried worked.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, TextIO

OK, FAILED, SKIPPED = "ok", "FAILED", "skipped"


@dataclass(frozen=True)
class StepOutcome:
    number: int
    title: str
    outcome: str
    detail: str


class Story:
    def __init__(self, out: Optional[TextIO] = None, width: int = 100) -> None:
        self.out = out or sys.stdout  # looked up now: tests and callers swap sys.stdout
        self.width = width
        self.outcomes: List[StepOutcome] = []
        self._open: Optional[int] = None
        self._title = ""

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, why: str) -> None:
        """Open the next step; the previous one must have ended."""
        if self._open is not None:
            self.fail("the demo moved on without an outcome")
        self._open = len(self.outcomes) + 1
        self._title = title
        self._print(f"\nStep {self._open}. {title}")
        self._print(textwrap.fill(why, self.width, initial_indent="  why: ", subsequent_indent="       "))

    def say(self, text: str, label: str = "") -> None:
        """A line (or lines) of what happened, indented under the step."""
        prefix = f"  {label + ':':<5} " if label else "        "
        for index, line in enumerate(text.splitlines() or [""]):
            self._print((prefix if index == 0 else " " * len(prefix)) + line)

    def _end(self, outcome: str, detail: str) -> None:
        if self._open is None:
            raise RuntimeError("no step is open")
        self.outcomes.append(StepOutcome(self._open, self._title, outcome, detail))
        self._print(f"  => {outcome}{': ' + detail if detail else ''}")
        self._open = None

    def ok(self, detail: str = "") -> None:
        self._end(OK, detail)

    def fail(self, detail: str) -> None:
        self._end(FAILED, detail)

    def skip(self, reason: str) -> None:
        self._end(SKIPPED, reason)

    def skip_step(self, title: str, why: str, reason: str) -> None:
        self.step(title, why)
        self.skip(reason)

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def summary(self, log_file: Optional[Path] = None) -> int:
        """Print what worked, what failed and what was skipped; the exit code (0: nothing failed)."""
        if self._open is not None:
            self.fail("the demo ended inside this step")
        counts = {kind: [o for o in self.outcomes if o.outcome == kind] for kind in (OK, FAILED, SKIPPED)}
        self._print(f"\nSummary: {len(counts[OK])} step(s) worked, {len(counts[FAILED])} failed, "
                    f"{len(counts[SKIPPED])} skipped")
        for outcome in counts[FAILED]:
            self._print(f"  FAILED  step {outcome.number}, {outcome.title}: {outcome.detail}")
        # Steps skipped for one reason are listed together: the reason is said once.
        reasons: List[str] = []
        steps: Dict[str, List[StepOutcome]] = {}
        for outcome in counts[SKIPPED]:
            if outcome.detail not in steps:
                reasons.append(outcome.detail)
                steps[outcome.detail] = []
            steps[outcome.detail].append(outcome)
        for reason in reasons:
            skipped = steps[reason]
            numbers = ", ".join(str(o.number) for o in skipped)
            named = f"steps {numbers}" if len(skipped) > 1 else f"step {numbers} ({skipped[0].title})"
            self._print(f"  skipped {named}: {reason}")
        if log_file is not None:
            self._print(f"The agent's log: {log_file}")
        return 1 if counts[FAILED] else 0


@contextmanager
def logs_to_file(path: Optional[Path], verbose: bool, prefix: str = "aos-sm-demo-") -> Iterator[Optional[Path]]:
    """Send every log record to ``path`` (a new temporary file when None) for the block, so that
    the story on stdout stays readable; with ``verbose`` leave logging as it is (stderr). Yields
    the file, or None when verbose."""
    if verbose:
        yield None
        return
    if path is None:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
        os.close(handle)
        path = Path(name)
    root = logging.getLogger()
    saved = list(root.handlers)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in saved:
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for old in saved:
            root.addHandler(old)
