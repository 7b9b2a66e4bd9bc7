"""Progress bars, per-file errors and the bad-file policy of the dataset converters.

A converter walks thousands of files for minutes. :class:`ConversionRun` is what every
``prepare_*`` function shares for that walk:

* :meth:`ConversionRun.track` shows a progress bar (tqdm, on stderr) over the files;
* :meth:`ConversionRun.file` guards the conversion of one file: an error there names the file;
  with ``strict`` it stops the run (:class:`ConversionError`), otherwise the file is skipped,
  its reason kept for the final report, and the walk goes on;
* :meth:`ConversionRun.finish` (entry points) prints that report and gives the exit status.

Policy of ``datasets/prepare_*.py`` (their ``--strict`` and ``--no-progress`` flags come from
:func:`add_conversion_arguments`): bad files are skipped and reported at the end with their
count and the first names; the exit status is 1 only when files were bad and none could be
converted, since a partly converted benchmark is usable and a re-run writes only what is
missing. A skipped file is missing from the benchmark, so the report says that scores are then
not comparable with published ones. ``--strict`` stops at the first bad file instead. Library
callers get ``strict`` and no progress bar by default.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "ConversionError",
    "ConversionRun",
    "add_conversion_arguments",
]

logger = logging.getLogger(__name__)

# Bad files logged one by one while the run goes on; the rest only in the final report.
_LOGGED_BAD_FILES = 10
# Bad files named in the final report.
_REPORTED_BAD_FILES = 5
EXIT_OK, EXIT_FAILED = 0, 1


class ConversionError(ValueError):
    """A file that cannot be read or converted; the message starts with the file's path.

    Attributes:
        path: The file.
        reason: What is wrong with it (the message without the path).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _reason(error: BaseException, path: str) -> str:
    """Why the conversion of ``path`` failed, naming another file when that one is at fault."""
    if isinstance(error, ConversionError):
        return error.reason if error.path == str(path) else str(error)
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass
class ConversionRun:
    """The walk of one converter over its files: progress, bad files, counts.

    Attributes:
        description: What is converted, for the progress bar and the report.
        strict: Stop at the first bad file (raise :class:`ConversionError`); else skip it.
        progress: Show a progress bar: True always, None when stderr is a terminal, False never.
        done: Files converted (or whose outputs already existed).
        bad: ``(path, reason)`` of every file skipped as bad, in order.
    """

    description: str = "converting"
    strict: bool = True
    progress: bool | None = False
    done: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace, description: str) -> ConversionRun:
        """The run of an entry point with :func:`add_conversion_arguments`' flags."""
        return cls(
            description=description,
            strict=args.strict,
            progress=False if args.no_progress else None,
        )

    def track(self, items: Iterable, *, total: int | None = None, unit: str = "file") -> Iterator:
        """Yields ``items`` under a progress bar (when enabled); log lines printed meanwhile do
        not break the bar."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        disable = {True: False, None: None, False: True}[self.progress]
        bar = tqdm(
            items,
            total=total,
            desc=self.description,
            unit=unit,
            file=sys.stderr,
            disable=disable,
            dynamic_ncols=True,
        )
        with contextlib.ExitStack() as stack:
            stack.callback(bar.close)
            if not bar.disable:
                stack.enter_context(logging_redirect_tqdm())
            yield from bar

    @contextlib.contextmanager
    def file(self, path: str) -> Iterator[None]:
        """Guards the conversion of the file ``path`` (the input it is named after).

        A normal exit counts the file as done. An exception (other than ``MemoryError``,
        ``KeyboardInterrupt``...) either stops the run as a :class:`ConversionError` naming
        ``path`` (``strict``), or records ``(path, reason)`` in :attr:`bad` and is swallowed.
        """
        try:
            yield
        except MemoryError:
            raise
        except Exception as e:
            reason = _reason(e, path)
            if self.strict:
                raise ConversionError(path, reason) from e
            self.bad.append((str(path), reason))
            if len(self.bad) <= _LOGGED_BAD_FILES:
                logger.warning("skipped %s: %s", path, reason)
            if len(self.bad) == _LOGGED_BAD_FILES:
                logger.warning("further bad files are listed only in the final report")
        else:
            self.done += 1

    def report(self) -> str:
        """Counts and the first bad files with their reasons ("" when no file was bad)."""
        if not self.bad:
            return ""
        total = len(self.bad) + self.done
        shown = min(len(self.bad), _REPORTED_BAD_FILES)
        lines = [
            f"{self.description}: {len(self.bad)} of {total} files skipped as bad; "
            f"the first {shown}:"
        ]
        lines += [f"  {path}: {reason}" for path, reason in self.bad[:_REPORTED_BAD_FILES]]
        if self.done:
            lines.append(
                "The skipped files are missing from the converted benchmark: scores on it are "
                "not comparable with published ones until they are replaced (re-download them) "
                "and the script is re-run (it writes only the missing outputs)."
            )
        return "\n".join(lines)

    def exit_status(self) -> int:
        """1 when files were bad and none was converted, else 0."""
        return EXIT_FAILED if self.bad and not self.done else EXIT_OK

    def finish(self, message: str) -> int:
        """Prints ``message`` (what was written) and the report; returns the exit status."""
        status = self.exit_status()
        if status == EXIT_OK:
            print(message)
        report = self.report()
        if report:
            print(report, file=sys.stderr)
        if status != EXIT_OK:
            print(f"error: no file could be converted ({self.description})", file=sys.stderr)
        return status


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--strict`` and ``--no-progress`` (see the module docstring)."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad file (default: skip bad files and list them at the end; "
        "the exit status is 1 only when no file could be converted)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown on stderr only when stderr is a terminal)",
    )
