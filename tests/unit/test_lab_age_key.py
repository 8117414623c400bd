"""The lab's age key pair for the backup copies (opsbook.lab.hosts.ensure_age_key): 0600 files, made once, and a
pair that age accepts (the public key encrypts what the private key decrypts)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from opsbook.lab import hosts

pytestmark = pytest.mark.skipif(not shutil.which("age-keygen"), reason="age is not installed (apt-get install age)")


def test_the_pair_is_made_once_private_and_works(tmp_path: Path) -> None:
    hosts.ensure_age_key(tmp_path)
    identity, recipient = tmp_path / hosts.AGE_IDENTITY, tmp_path / hosts.AGE_RECIPIENT
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {identity.name: 0o600,
                                                                             recipient.name: 0o600}
    public = recipient.read_text().strip()
    assert public.startswith("age1") and len(public) == 62
    secret = identity.read_text()
    cipher = subprocess.run(["age", "-r", public], input=b"row", capture_output=True, check=True).stdout
    assert subprocess.run(["age", "-d", "-i", str(identity)], input=cipher, capture_output=True,
                          check=True).stdout == b"row"
    # a second call keeps the pair; a lost public key is derived again from the private one, never a new pair
    hosts.ensure_age_key(tmp_path)
    recipient.unlink()
    hosts.ensure_age_key(tmp_path)
    assert identity.read_text() == secret and recipient.read_text().strip() == public
