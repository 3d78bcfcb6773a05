"""What the CLI shows on a terminal: text from a store made safe to print, and the progress bar."""

import re

# a terminal's escape sequences: CSI (ESC [ or C1 CSI, … final byte), OSC (ESC ] or C1 OSC, … BEL or ESC \),
# and ESC with one byte
_ESCAPES = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*[\x07\x9c]?|\x1b[ -~]?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1


def printable(text) -> str:
    """Text read from a store (a recorded error, a spec key, a dimension's name) as it is safe to print: without
    escape sequences and control characters (which could clear the screen, retitle the terminal or hide
    what follows), its line breaks and tabs as spaces."""
    return _CONTROLS.sub(lambda m: " " if m.group() in "\t\n\r" else "", _ESCAPES.sub("", str(text)))


class ProgressBar:
    """Cells done, elapsed time and ETA on stderr; shown from the first stored batch on (so that
    errors found before any work print alone on their line)."""

    def __init__(self):
        self.bar = None

    def update(self, done: int, total: int):
        if self.bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("cells"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("cells", total=total, completed=done)
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total)

    def stop(self):
        if self.bar is not None:
            self.bar.stop()
