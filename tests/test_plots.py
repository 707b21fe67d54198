"""ragcourse.plots: where a figure can be redrawn in place (notebook 03's live loss curve)."""

import pytest

from ragcourse import plots


def test_the_live_plot_draws_in_colabs_kernel_and_not_in_a_terminal(monkeypatch):
    import IPython

    Shell = type("Shell", (), {"kernel": object()})  # google.colab._shell.Shell: a kernel shell named otherwise
    TerminalInteractiveShell = type("TerminalInteractiveShell", (), {})
    assert plots.can_draw_live(Shell()) and not plots.can_draw_live(TerminalInteractiveShell())
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())  # the running shell, as train's callback asks
    assert plots.can_draw_live()
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # plain Python
    assert not plots.can_draw_live()


def test_the_real_shell_classes():
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    zmqshell = pytest.importorskip("ipykernel.zmqshell")
    Colab = type("Shell", (zmqshell.ZMQInteractiveShell,), {})  # what google.colab._shell.Shell is
    assert plots.can_draw_live(Colab.__new__(Colab))  # an instance without a started kernel, as traitlets allow
    assert not plots.can_draw_live(TerminalInteractiveShell.__new__(TerminalInteractiveShell))
