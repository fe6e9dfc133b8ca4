"""Files written by earlier releases still load, and continue training as they would have.

``tests/fixtures/network_0.1.0.safetensors`` was saved by sparkbatch 0.1.0 (commit 57c2998,
before the network was rewritten over a backend); its companion file holds what that release
computed from it: the output for a probe input, and the score and parameters of one more step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparkbatch.data import DataSet
from sparkbatch.data.format import load_tensors
from sparkbatch.nn import Adam, Dense, Network, Output

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_network_saved_by_0_1_0_loads_and_continues_as_it_did():
    net = Network.load(str(FIXTURES / "network_0.1.0.safetensors"))
    expected, metadata = load_tensors(str(FIXTURES / "network_0.1.0.expected.safetensors"))
    assert metadata["made_by"].startswith("sparkbatch 0.1.0")
    assert net.layers == (
        Dense(5, 6, "relu", l2=1e-3, dropout=0.1),
        Dense(6, 4, "tanh"),
        Output(4, 3, "softmax", "cross_entropy"),
    )
    assert net.updater == Adam(0.01)
    assert (net.iteration, net.epoch, net.updater_steps) == (8, 2, 8)
    np.testing.assert_array_equal(net.output(expected["probe"]), expected["output"])
    # One more step, dropout and Adam's saved moments included, lands where 0.1.0's did.
    score = net.fit_batch(DataSet(expected["x"], expected["y"]))
    assert score == float(expected["score"][0])
    np.testing.assert_array_equal(net.params(), expected["params_after_step"])
