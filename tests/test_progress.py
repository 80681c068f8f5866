"""Progress written to a log file (stderr not a terminal): a few plain lines, no carriage-return redraws."""

import io

from vlalign.progress import LineProgress
from vlalign.train import run_training


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_tenth_of_the_run_with_step_loss_and_rate():
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(total=600, desc="train", unit="step", stream=stream, clock=clock)
    for step in range(1, 601):
        clock.now += 0.5
        bar.set_postfix(loss=f"{1 / step:.3f}")
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 10
    assert lines[0] == "train: 60/600 steps (10%), loss=0.017, 2.00 steps/s, 30 s"
    assert lines[1] == "train: 120/600 steps (20%), loss=0.008, 2.00 steps/s, 60 s"
    assert lines[-1].startswith("train: 600/600 steps (100%)")


def test_slow_steps_write_a_line_every_30_seconds_and_a_resumed_run_counts_from_its_step():
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(total=1000, initial=500, desc="train", unit="step", stream=stream, clock=clock)
    for _ in range(6):
        clock.now += 20.0
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    # 30 s after the last line: at 40, 80 and 120 s; close() writes the last step.
    assert [line.split(",")[0] for line in lines] == ["train: 502/1000 steps (50%)", "train: 504/1000 steps (50%)",
                                                      "train: 506/1000 steps (51%)"]
    assert lines[0].endswith("0.05 steps/s, 40 s")


def test_iteration_without_a_total_and_close_writes_the_end_once():
    stream = io.StringIO()
    assert list(LineProgress(iter(range(3)), desc="convert", unit="sample", stream=stream)) == [0, 1, 2]
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("convert: 3 samples, ")


def test_training_into_a_log_file_writes_a_few_plain_lines(tiny_cfg, tmp_path, capsys):
    tiny_cfg.train.steps, tiny_cfg.train.checkpoint_every = 20, 20
    run_training(tiny_cfg, tmp_path / "run", progress=True)  # stderr is captured here: not a terminal
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert "\r" not in err and len(lines) == 10
    assert lines[-1].startswith("train: 20/20 steps (100%), loss=") and "steps/s" in lines[-1]
