"""Platform discovery, emulation and the `tunerd platform` command, on fake trees of real boards."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunerd.errors import PlatformError
from tunerd.sysfs import (SysfsReader, arm_core_name, format_cpu_list, parse_cpu_list, parse_cpuinfo,
                          parse_int, parse_midr)

CPU = "devices/system/cpu"
POLICY = f"{CPU}/cpufreq/policy"

# --- pure parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, cpus", [
    ("0-3,8\n", [0, 1, 2, 3, 8]), ("", []), ("  \n", []), ("5", [5]), ("0 1 2 3\n", [0, 1, 2, 3]),
    ("0 3 4 5", [0, 3, 4, 5]), ("4-7,0-1", [0, 1, 4, 5, 6, 7]), ("2,2,1-2", [1, 2]),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("junk", ["a", "3-1", "0-", "-1", "0x3", "1;2", "0-3:2"])
def test_parse_cpu_list_rejects_junk(junk):
    with pytest.raises(ValueError, match="CPU list"):
        parse_cpu_list(junk)


def test_format_cpu_list():
    assert format_cpu_list([8, 0, 1, 2, 3]) == "0-3,8"
    assert format_cpu_list([]) == ""
    assert format_cpu_list((0, 3, 4, 5)) == "0,3-5"


def test_parse_int():
    assert parse_int("1844000\n") == 1844000
    assert parse_int(" 0x4e ") == 0x4E
    for junk in ("", "fast", "1.5", "0xzz"):
        with pytest.raises(ValueError, match="integer"):
            parse_int(junk)


ARM64_CPUINFO = """processor\t: 0
BogoMIPS\t: 3.84
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

processor\t: 4
CPU implementer\t: 0x41
CPU part\t: 0xd09
"""

ARM32_CPUINFO = """processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
CPU implementer\t: 0x41
CPU part\t: 0xc07
processor\t: 1
model name\t: ARMv7 Processor rev 3 (v7l)
CPU part\t: 0xc0f

Hardware\t: Hardkernel ODROID-XU3
Serial\t\t: 0000000000000000
"""

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
power management:

"""


def test_parse_cpuinfo_blocks():
    per_cpu, common = parse_cpuinfo(ARM64_CPUINFO)
    assert sorted(per_cpu) == [0, 4]
    assert per_cpu[0]["CPU part"] == "0xd03" and per_cpu[0]["CPU architecture"] == "8"
    assert per_cpu[4]["CPU part"] == "0xd09" and common == {}
    # arm32: no blank line between processors here, and a trailer outside any processor.
    per_cpu, common = parse_cpuinfo(ARM32_CPUINFO)
    assert per_cpu[1]["CPU part"] == "0xc0f" and common["Hardware"] == "Hardkernel ODROID-XU3"
    per_cpu, _ = parse_cpuinfo(X86_CPUINFO)
    assert per_cpu[0]["model name"] == "AMD EPYC 7B13" and per_cpu[0]["power management"] == ""


@pytest.mark.parametrize("junk", ["processor : 0\nthis line has no colon\n", "processor : zero\n",
                                  ": value without key\n"])
def test_parse_cpuinfo_rejects_junk(junk):
    with pytest.raises(ValueError, match="cpuinfo"):
        parse_cpuinfo(junk)


def test_parse_midr_and_core_names():
    assert parse_midr("0x00000000410fd034\n") == (0x41, 0xD03)
    assert parse_midr("0x000000004e0f0030") == (0x4E, 0x003)
    assert arm_core_name(0x41, 0xD09) == "A73" and arm_core_name(0x4E, 0x003) == "Denver2"
    assert arm_core_name(0x41, 0xC07) == "A7" and arm_core_name(0x51, 0x805) == "Kryo4xx-Silver"
    assert arm_core_name(0x41, 0xFFF) == "ARM-0xfff" and arm_core_name(0x99, 0x1) == "0x99-0x001"
    with pytest.raises(ValueError):
        parse_midr("MIDR")


def test_reader_fallbacks_and_roots(tmp_path):
    fs = SysfsReader(tmp_path / "sys")
    assert fs.proc_root == tmp_path / "proc"
    assert SysfsReader("/sys").proc_root == Path("/proc")
    assert fs.read_int("missing", default=7) == 7 and fs.read_cpus("missing") is None
    assert fs.numbered("no/such/dir", "cpu") == []
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "junk").write_text("12 kHz\n")
    with pytest.raises(PlatformError, match=r"sys/junk: expected an integer"):
        fs.read_int("junk")
