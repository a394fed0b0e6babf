"""Harmless native chatter is kept out of the log; everything else passes."""

from __future__ import annotations

import pytest


def test_native_chatter_is_filtered_and_the_rest_passes(capfd: pytest.CaptureFixture) -> None:
    import os

    from l2lab.imports import quiet_native_stderr

    with quiet_native_stderr():
        os.write(2, b"I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on. You may see\n")
        os.write(2, b"E0000 something a user must see\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "E0000 something a user must see" in err
