"""Hostile and careless bundles and devices, refused by `haqa ship` before anything is installed:
paths and newlines in names, folders haqa did not make, symbolic links, locks of the wrong shape."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.bundles import LOCK_DAMAGE, edit_lock
from tests.support.net import free_port
from tests.support.ship import no_traceback


def test_a_lock_name_that_is_a_path_is_refused_and_nothing_outside_the_bundles_folder_is_touched(
        small_bundle, device, haqa):
    """target.name = "../../../../x", SHA256SUMS written again: the install folder would be
    <workdir>/bundles/smollm2-135m@../../../../x, that is <workdir>/../x, where ship removed "stale" files."""
    outside = device.parent.parent.parent / "x"
    outside.mkdir()
    (outside / "notes.txt").write_text("the user's own file")
    edit_lock(small_bundle, lambda lock: lock["target"].update(name="../../../../x"))
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2, err
    assert "'target.name': names are lower case letters" in err and "got '../../../../x'" in err, err
    no_traceback(err)
    assert sorted(os.listdir(outside)) == ["notes.txt"] and (outside / "notes.txt").read_text() == "the user's own file"
    assert not device.parent.exists()  # not even the bundles folder was made


@pytest.mark.parametrize("key, name", [("target", "local\nExecStartPre=/bin/sh -c 'touch /tmp/owned'"),
                                       ("recipe", "smollm2-135m\n[Service]")], ids=["target", "recipe"])
def test_a_name_with_a_newline_is_refused_before_anything_is_uploaded(small_bundle, device, haqa, key, name):
    edit_lock(small_bundle, lambda lock: lock[key].update(name=name))
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2 and f"'{key}.name': names are lower case letters" in err, err
    no_traceback(err)
    assert not device.parent.exists()


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_an_existing_folder_haqa_did_not_make_keeps_its_files(small_bundle, device, haqa, tmp_path, kind):
    mine = device if kind == "folder" else tmp_path / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own file")
    if kind == "link":  # the install path is a symbolic link to the user's folder
        device.parent.mkdir(parents=True)
        device.symlink_to(mine)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2, err
    what = "a folder haqa did not make (it has no .haqa-install" if kind == "folder" else "a symbolic link"
    assert f"{device} on the device is {what}" in err and "hint: move it out of the way" in err, err
    no_traceback(err)
    assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "the user's own file"


def test_an_install_of_an_earlier_haqa_is_taken_over_and_its_stale_files_removed(small_bundle, device, haqa):
    """A folder with a lock and run.sh but no marker (what haqa before the marker wrote) is haqa's: it
    gets the marker, and a file the new bundle does not list is removed. The placeholder server then
    stops at once, so ship fails after the upload, which is what this test looks at."""
    device.mkdir(parents=True)
    for name in ("haqa.lock.json", "run.sh", "old-Q8_0.gguf"):
        (device / name).write_text("from an earlier bundle")
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert "removed 1 file(s) an earlier bundle left in" in err, err
    assert (device / ".haqa-install").is_file() and not (device / "old-Q8_0.gguf").exists()
    assert (device / "haqa.lock.json").read_bytes() == (small_bundle / "haqa.lock.json").read_bytes()
    assert code == 2 and "llama-server stopped before it answered /health" in err


def _link_a_listed_file(bundle: Path, outside: Path) -> None:
    # The same bytes outside the bundle, so the sha256 still matches: only the link is wrong.
    shutil.copy(bundle / "Modelfile", outside / "Modelfile")
    (bundle / "Modelfile").unlink()
    (bundle / "Modelfile").symlink_to(outside / "Modelfile")


def _link_a_parent_folder(bundle: Path, outside: Path) -> None:
    shutil.copytree(bundle / "bin", outside / "bin")
    shutil.rmtree(bundle / "bin")
    (bundle / "bin").symlink_to(outside / "bin")


def _link_an_unlisted_entry(bundle: Path, outside: Path) -> None:
    (outside / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (bundle / "notes").symlink_to(outside / "id_ed25519")


@pytest.mark.parametrize("link", [_link_a_listed_file, _link_a_parent_folder, _link_an_unlisted_entry],
                         ids=["listed file", "parent folder", "unlisted entry"])
def test_a_symbolic_link_in_a_bundle_is_refused(small_bundle, device, haqa, tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    link(small_bundle, outside)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2 and "is a symbolic link (to " in err and "refuses to read through a link" in err, err
    no_traceback(err)
    assert not device.parent.exists()


@pytest.mark.parametrize("damage, message", LOCK_DAMAGE)
def test_a_lock_of_the_wrong_shape_gets_one_clear_message(small_bundle, device, haqa, damage, message):
    damage(small_bundle)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop")
    assert code == 2 and message in err and "hint:" in err, err
    no_traceback(err)
    assert not device.parent.exists()


def _bundle_of(path: Path):
    from haqa.ship.verify import verify_bundle

    return verify_bundle(path)


def test_a_config_folder_or_home_the_device_prints_with_a_newline_is_refused(small_bundle, tmp_path, monkeypatch):
    """The device is this machine through the local runner; its XDG_CONFIG_HOME, HOME and `id -u` are
    what a hostile device would print (`id` is a script on PATH printing two lines)."""
    from haqa.errors import UserError
    from haqa.runner import LocalRunner
    from haqa.ship.service import LaunchdService, SystemdUserService

    bundle, dest, runner = _bundle_of(small_bundle), tmp_path / "install", LocalRunner(tmp_path / "home")
    monkeypatch.setenv("XDG_CONFIG_HOME", f"{tmp_path}/conf\nig")
    with pytest.raises(UserError, match="the user's config folder on the device is .*not an absolute plain path"):
        SystemdUserService(runner, bundle, dest, "127.0.0.1", 8080).start()
    monkeypatch.setenv("HOME", f"{tmp_path}/ho\nme")
    with pytest.raises(UserError, match="the user's home on the device is .*not an absolute plain path"):
        LaunchdService(runner, bundle, dest, "127.0.0.1", 8080).start()
    assert not (tmp_path / "conf\nig").exists() and not (tmp_path / "ho\nme").exists()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\nprintf '501\\nevil'\n")
    (fake / "id").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(UserError, match="`id -u` on the device printed '501\\\\nevil', not a user id"):
        LaunchdService(runner, bundle, dest, "127.0.0.1", 8080).stop()
