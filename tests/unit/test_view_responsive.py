"""The GIL switch interval is lowered only while a background load of a new alias holder runs."""

from __future__ import annotations

import sys

import pytest

from view_service.refs import SWAP_SWITCH_S, responsive


def test_the_interval_is_lowered_while_loads_run_and_restored_after_the_last():
    before = sys.getswitchinterval()
    with responsive():
        assert sys.getswitchinterval() == pytest.approx(SWAP_SWITCH_S)
        with responsive():  # two holders loading at once
            assert sys.getswitchinterval() == pytest.approx(SWAP_SWITCH_S)
        assert sys.getswitchinterval() == pytest.approx(SWAP_SWITCH_S)  # one still loads
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), responsive():
        raise RuntimeError("the load failed")
    assert sys.getswitchinterval() == before  # restored when a load fails too
