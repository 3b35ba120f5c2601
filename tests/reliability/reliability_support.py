"""What the reliability tests share besides fixtures: whether the long variants run
(CLSTREAM_LONG_TESTS=1: more kill points, more fuzz examples, more clients, longer load)."""
import os

LONG = os.environ.get("CLSTREAM_LONG_TESTS", "") not in ("", "0")
