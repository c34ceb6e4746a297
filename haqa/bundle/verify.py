"""A bundle folder checked before haqa ships or reproduces it.

- No symbolic link anywhere in the folder: a link would make haqa read (and upload) a file outside it.
- Every file SHA256SUMS lists is a plain path inside the folder, is there, and has that sha256.
- On request, SHA256SUMS is signed (`SHA256SUMS.sig`) by a key in an OpenSSH allowed-signers file,
  checked with `ssh-keygen -Y verify` in the namespace `haqa-bundle`.

SHA256SUMS catches accidents (a truncated copy, a damaged disk, a file edited by mistake), not
tampering: whoever can change a bundle can write its sums again. Only the signature says who made it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from haqa.bundle.lock.read import REDEPLOY as _REDEPLOY
from haqa.errors import UserError
from haqa.hashing import sha256_file

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
NAMESPACE = "haqa-bundle"
SIGN_HINT = f"sign it in the bundle folder: ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n {NAMESPACE} {SUMS}"
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def regular_files(root: Path) -> set[str]:
    """The bundle's regular files, as paths relative to root; a UserError for any symbolic link in it
    (the root itself may be one: it is the user's own path to the bundle)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink():
                raise UserError(f"{p} is a symbolic link (to {os.readlink(p)}); a bundle holds its own files, "
                                "so haqa refuses to read through a link", hint=f"copy the file in, or {_REDEPLOY}")
        found |= {(Path(folder) / n).relative_to(root).as_posix() for n in files if (Path(folder) / n).is_file()}
    return found


def _safe_name(name: str, sums: Path) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name != str(p) or not name.isprintable():
        raise UserError(f"{sums} lists {name!r}, which is not a plain path inside the bundle; refusing it",
                        hint=_REDEPLOY)
    return name


def read_sums(root: Path) -> tuple[bytes, dict[str, str]]:
    """SHA256SUMS as bytes (what a signature covers) and as {file: sha256}."""
    sums = root / SUMS
    if not sums.is_file():
        raise UserError(f"{root} has no {SUMS}, so its files cannot be checked", hint=_REDEPLOY)
    data = sums.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{sums} is not UTF-8 text (byte {e.start}), so it is not a list of checksums",
                        hint=_REDEPLOY) from None
    files: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line)
        if not m:
            raise UserError(f"{sums}, line {n}, is not '<sha256>  <file>': {line[:80]!r}", hint=_REDEPLOY)
        files[_safe_name(m.group(2), sums)] = m.group(1)
    return data, files


def check_files(root: Path, files: dict[str, str]) -> None:
    """Every listed file is a regular file with the listed sha256."""
    for name, digest in sorted(files.items()):
        f = root / name
        if f.is_dir():
            raise UserError(f"{f} is a folder, where {SUMS} lists a file", hint=_REDEPLOY)
        if not f.is_file():
            raise UserError(f"{f} is listed in {SUMS} but missing", hint=f"the bundle is incomplete; {_REDEPLOY}")
        if (got := sha256_file(f)) != digest:
            raise UserError(f"{f} does not match {SUMS} (sha256 {got[:16]}..., expected {digest[:16]}...): "
                            "the bundle was changed or damaged; refusing it", hint=_REDEPLOY)


@dataclass(frozen=True)
class Checked:
    files: dict[str, str]  # every file SHA256SUMS lists -> its sha256, each one checked
    present: set[str]  # every regular file in the folder
    signed_by: str | None  # the principal whose key signed SHA256SUMS, when allowed_signers was given


def verify_sums(root: Path, allowed_signers: Path | None = None) -> Checked:
    """The folder checked: no symbolic link in it, SHA256SUMS signed by a key in allowed_signers (when
    given; before any file is hashed), and every listed file with its listed sha256."""
    if not root.is_dir():
        raise UserError(f"{root} is not a bundle folder",
                        hint="pass the folder `haqa deploy` wrote, like dist/smollm2-135m@local/")
    present = regular_files(root)
    data, files = read_sums(root)
    signed_by = verify_signature(root, data, allowed_signers) if allowed_signers is not None else None
    check_files(root, files)
    return Checked(files, present, signed_by)


def verify_signature(root: Path, sums: bytes, allowed_signers: Path) -> str:
    """The principal (from allowed_signers) whose key signed these SHA256SUMS bytes in the haqa-bundle
    namespace; a UserError when there is no signature or it does not verify."""
    sig = root / SIGNATURE
    if not sig.is_file():
        raise UserError(f"{root} has no {SIGNATURE}, so who made it cannot be checked against {allowed_signers}",
                        hint=SIGN_HINT)
    if not allowed_signers.is_file():
        raise UserError(f"--allowed-signers {allowed_signers}: no such file",
                        hint=f"an OpenSSH allowed-signers file: one line per key, like "
                             f"'you@example.com namespaces=\"{NAMESPACE}\" ssh-ed25519 AAAA...'")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise UserError("ssh-keygen is not installed here, so the signature cannot be checked",
                        hint="install OpenSSH's client tools (apt-get install openssh-client)")

    def keygen_run(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([keygen, "-Y", *args], input=data, capture_output=True, timeout=60)

    found = keygen_run("find-principals", "-s", str(sig), "-f", str(allowed_signers))
    listed = found.stdout.decode(errors="replace").splitlines() if found.returncode == 0 else []
    principals = [p for line in listed for p in line.strip().split(",") if p]
    if not principals:
        raise UserError(f"{sig} was not made by any key in {allowed_signers}; refusing the bundle",
                        hint="ship only bundles signed by a key you trust, or add the signer's key to that file")
    for principal in principals:
        r = keygen_run("verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE, "-s", str(sig),
                       data=sums)
        if r.returncode == 0:
            return principal
    why = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
    raise UserError(f"{sig} does not verify for {SUMS} in {root} "
                    f"(ssh-keygen: {why[-1] if why else 'no reason given'}): "
                    f"the checksums were changed after they were signed, or signed for another namespace than "
                    f"{NAMESPACE}; refusing the bundle", hint=f"get the bundle again from its maker, or {SIGN_HINT}")
