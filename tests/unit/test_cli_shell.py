"""``sheesh vm shell``'s window-size relay (``cli.shell._Resizes``), under a burst of SIGWINCH."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BURST = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from sheesh.cli.shell import _Resizes

    class Session:
        sizes = []
        def resize(self, rows, cols):
            self.sizes.append((rows, cols))

    session = Session()
    resizes = _Resizes(session, 0)  # stdin is not a terminal: 24 x 80
    signal.signal(signal.SIGWINCH, resizes.signalled)
    # from another process, as the kernel's come: they arrive while the handler runs (a thread of this one would
    # need the interpreter lock the handler holds)
    kill = "import os, signal, sys; [os.kill(int(sys.argv[1]), signal.SIGWINCH) for _ in range(20000)]"
    burst = subprocess.Popen([sys.executable, "-c", kill, str(os.getpid())])
    while burst.poll() is None:  # Python code on the main thread, for the handler to interrupt (itself too)
        sum(range(50))
    signal.signal(signal.SIGWINCH, signal.SIG_DFL)
    deadline = time.monotonic() + 10
    while not session.sizes and time.monotonic() < deadline:
        time.sleep(0.01)
    resizes.stop()
    print(len(session.sizes), session.sizes[-1])
    """
)


def test_a_burst_of_window_changes_reaches_the_session_and_never_freezes_the_shell() -> None:
    """Signals that come together run the handler inside itself: it must take no lock (one that did froze the
    terminal: the nested call waited for the lock its outer call held). The thread sends the size, fewer
    times than there were signals (those that came together make one resize)."""
    argv = [sys.executable, "-c", BURST]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    count, size = done.stdout.split(" ", 1)
    assert 1 <= int(count) < 20000 and size.strip() == "(24, 80)"
