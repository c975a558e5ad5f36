"""`monoceros -k` on random documents, as a user would run it.

tests/test_config.py fuzzes the loader in-process with hundreds of
documents; this runs the real command on a sample of the same documents,
on random YAML text and on random bytes: whatever the file holds, the
command exits 0 (valid) or 2 (invalid, with one line on stderr), and never
prints a traceback.
"""

from __future__ import annotations

import subprocess
import sys

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import _documents

from tests.harness import venv_env

SAMPLE = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
YAML_TEXT = st.text(alphabet="ab:-[]{}'\" \n\t#&*!|>%@`,?0.1sh", max_size=80)


def validate(tmp_path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "monoceros", "-k", "-c", str(path)],
        capture_output=True,
        timeout=60,
        env=venv_env(),
        cwd=tmp_path,
    )
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert "Traceback" not in stdout + stderr, stderr
    assert result.returncode in (0, 2), (result.returncode, stderr)
    if result.returncode == 0:
        assert stderr == "" and "is valid" in stdout, (stdout, stderr)
    else:
        lines = stderr.splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith("monoceros: invalid configuration: ")


@SAMPLE
@given(doc=_documents())
def test_random_documents(tmp_path, doc):
    validate(tmp_path, yaml.safe_dump(doc, allow_unicode=True).encode())


@SAMPLE
@given(content=st.one_of(YAML_TEXT.map(str.encode), st.binary(max_size=200)))
def test_random_text_and_bytes(tmp_path, content):
    validate(tmp_path, content)
