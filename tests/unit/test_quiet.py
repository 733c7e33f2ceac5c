"""The quiet console: Lightning's chatter filtered, the progress bar only on a terminal."""

import io
import logging
import warnings

from omegaconf import OmegaConf

from backdoor_bench.quiet import LightningFilter, silence_known_warnings
from backdoor_bench.training.fit import show_progress_bar


def record(name, level, msg):
    return logging.LogRecord(name, level, __file__, 0, msg, (), None)


def test_lightning_filter():
    tip = record("pytorch_lightning.utilities.rank_zero", logging.INFO, "\N{ELECTRIC LIGHT BULB} Tip: try installing x")
    gpu = record("pytorch_lightning.utilities.rank_zero", logging.INFO, "GPU available: False, used: False")
    warn = record("lightning.pytorch", logging.WARNING, "something is off")
    ours = record("backdoor_bench.training.fit", logging.INFO, "epoch 1/2")
    console, file = LightningFilter(info=False), LightningFilter()
    assert [console.filter(r) for r in (tip, gpu, warn, ours)] == [False, False, True, True]
    assert [file.filter(r) for r in (tip, gpu, warn, ours)] == [False, True, True, True]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_follows_the_terminal_unless_set():
    def show(setting, out):
        return show_progress_bar(OmegaConf.create({"progress_bar": setting}), out)

    assert [show(None, Terminal()), show(None, io.StringIO())] == [True, False]
    assert [show(True, io.StringIO()), show(False, Terminal())] == [True, False]


def test_known_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning that matters"]
