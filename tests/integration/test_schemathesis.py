"""Property-based fuzzing of every operation in /openapi.json: no input may produce a 5xx, and every response
must conform to the document (status code, content type and body schema).

Runs schemathesis against a real `sheesh serve` process on the fake VMM driver (so thousands of creates
cost nothing); VMs it creates run the real guest agent as host processes. Under CI the generator is seeded
(SHEESH_FUZZ_SEED, default 1) so a landing is reproducible; elsewhere each run explores new inputs.
SHEESH_FUZZ_EXAMPLES (default 40) sets the examples per operation for longer exploratory runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sheesh.config import Settings
from sheesh.image.builder import ImageBuilder
from tests.server import ServerProcess

LIMITS = '{"create": 100000, "exec": 100000, "run_ts": 100000, "run_js": 100000, "upload": 100000, "download": 100000}'
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
"""No 5xx, and every answer is one the document describes (status, content type, body schema)."""


@pytest.mark.skipif(
    shutil.which("schemathesis") is None and not Path(".venv/bin/schemathesis").exists(),
    reason="schemathesis not installed",
)
def test_no_server_errors_for_any_generated_input(tmp_path: Path) -> None:
    image_dir = Settings().resolved_image_dir()
    ImageBuilder(image_dir).build()  # cached after setup; a default image must be registered
    # the fake "VMs" run Deno from the host: use the one cached by the image build, if any
    deno_dirs = [str(p.parent) for p in sorted(image_dir.glob("cache/*deno*/deno"))]
    path = ":".join([*deno_dirs, os.environ.get("PATH", "")])
    server = ServerProcess(tmp_path / "data", image_dir, SHEESH_VMM="fake", SHEESH_RATE_LIMITS=LIMITS, PATH=path)
    server.start()
    try:
        with server.client() as c:
            assert c.get("/openapi.json").json()["openapi"] == "3.0.3"
        binary = shutil.which("schemathesis") or ".venv/bin/schemathesis"
        seed = os.environ.get("SHEESH_FUZZ_SEED") or ("1" if os.environ.get("CI") else None)
        proc = subprocess.run(
            [
                binary,
                "run",
                f"{server.url}/openapi.json",
                "-H",
                f"X-API-Key: {server.api_key}",
                "--checks",
                CHECKS,
                "--max-examples",
                os.environ.get("SHEESH_FUZZ_EXAMPLES", "40"),
                *(["--seed", seed] if seed else []),
                "--request-timeout",
                "30",
                "--continue-on-failure",
                "--no-color",
                # a reset wipes the server under test (users, keys, VMs), a drain stops its creates (503): both
                # have their own tests
                "--exclude-path",
                "/admin/reset",
                "--exclude-path",
                "/v1/nodes/{name}/drain",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        counts = re.search(r"(\d+) generated, (\d+) passed", output)
        assert counts is not None, output[-3000:]
        generated, passed = map(int, counts.groups())
        assert generated == passed and generated > 200, output[-3000:]
        tested = re.search(r"Tested: (\d+)", output)
        assert tested is not None and int(tested.group(1)) >= 11
    finally:
        server.stop()
        server.kill_vms()
        for pidfile in (server.data_dir / "vms").glob("*/vmm.pid"):
            subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False, capture_output=True)
