"""The mutation gate: named breakages of each promise's mechanism, and the tests that must catch them."""
