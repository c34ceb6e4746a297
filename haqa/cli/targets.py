"""`haqa targets list|show|validate`."""

from haqa.cli._catalog import make_group
from haqa.config import load_target


def _row(t):
    gpu = t.hardware.gpu
    return [t.name, t.hardware.arch, str(t.hardware.cores), f"{t.hardware.ram_gib:g}",
            gpu.kind if gpu.kind != "none" else "-", t.connect.kind, t.description]


targets = make_group("targets", load_target, _row, ["name", "arch", "cores", "RAM GiB", "GPU", "connect", "description"])
