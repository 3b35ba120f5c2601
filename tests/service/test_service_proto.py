"""The contract: generated code matches the .proto byte for byte, and every element is documented."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "clstream" / "v1" / "continual_learner.proto"


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    import importlib.util
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    pinned = re.search(r'"grpcio-tools==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    installed = importlib.metadata.version("grpcio-tools")
    assert installed == pinned, f"grpcio-tools {installed} is installed, pyproject pins {pinned}: install the pin"
    for fresh in generate.generate(tmp_path):
        committed = ROOT / "proto" / "clstream_proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"


def test_every_rpc_message_field_and_enum_value_is_documented():
    lines = PROTO.read_text().splitlines()
    element = re.compile(r"\s*(rpc |message |enum |service |oneof |(repeated |optional )?[\w.<>, ]+ \w+ = \d+;|"
                         r"[A-Z_0-9]+ = \d+;)")
    undocumented = []
    for i, line in enumerate(lines):
        if element.match(line) and not lines[i - 1].strip().startswith("//"):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, "undocumented:\n" + "\n".join(undocumented)


def test_the_package_and_service_names():
    from clstream_proto import continual_learner_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ContinualLearner"]
    assert pb.DESCRIPTOR.package == "clstream.v1" and service.full_name == "clstream.v1.ContinualLearner"
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert streaming == {"Train": (True, True), "EndBucket": (False, False), "RegisterEvalSet": (True, False),
                         "Predict": (False, False), "Evaluate": (True, False), "GetStatus": (False, False),
                         "ForgetStream": (False, False),
                         "Rollback": (False, False), "WatchModel": (False, True)}
