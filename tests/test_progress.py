"""Progress of long loops: a bar on a terminal, plain log lines elsewhere, nothing when disabled."""
import io
import logging

from chatglm.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class Pipe(io.StringIO):
    def isatty(self):
        return False


def test_terminal_gets_a_bar_with_rate_and_time_left():
    term = FakeTerminal()
    with Progress(40, "predict test", stream=term) as p:
        for _ in range(4):
            p.update(10)
    out = term.getvalue()
    assert "predict test" in out and "40/40" in out and "samples/s" in out
    assert "\r" in out  # redrawn in place


def test_a_pipe_gets_log_lines_with_rate_and_time_left(caplog):
    pipe = Pipe()
    with caplog.at_level(logging.INFO, logger="chatglm.progress"):
        with Progress(10, "building", unit="steps", stream=pipe, every_s=0) as p:
            for _ in range(10):
                p.update(1, loss=2.5)
    assert pipe.getvalue() == ""  # no bar characters in a log file
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # every update (every_s=0) below 100%, then the summary
    assert lines[0].startswith("building: 1/10 steps (10%), ") and lines[0].endswith(" left, loss 2.500")
    assert "steps/s" in lines[0]
    assert lines[-1].startswith("building: 10/10 steps (100%), ") and ", took " in lines[-1]


def test_log_lines_are_spaced_in_time(caplog):
    with caplog.at_level(logging.INFO, logger="chatglm.progress"):
        with Progress(1000, "predict", stream=Pipe(), every_s=3600) as p:
            for _ in range(1000):
                p.update(1)
    assert len(caplog.records) == 1  # only the final line within the hour


def test_disabled_progress_says_nothing(caplog):
    term = FakeTerminal()
    with caplog.at_level(logging.INFO, logger="chatglm.progress"):
        with Progress(5, "predict", enabled=False, stream=term, every_s=0) as p:
            p.update(5)
    assert term.getvalue() == "" and not caplog.records
