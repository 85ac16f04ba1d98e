"""The Buildroot br2-external tree, checked without Buildroot (it cannot be fetched here).

What is held: the package's version and runtime dependencies agree with pyproject.toml; every
file the tree references exists; names follow Buildroot's rules (package directory <-> .mk
variable prefix <-> BR2_PACKAGE_ symbol); and the layout rules Buildroot's check-package
applies to .mk, Config.in, .hash, defconfig and start-script files (its manual's
"writing-rules" and "adding-packages" chapters), re-stated here as plain checks.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from aos_sm.agent.config import parse_config

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "buildroot"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Python packages that Buildroot itself carries (read in buildroot/buildroot's package/ at
# e991fa071605, August 2026); anything else must have a recipe in this tree.
# python-cryptography: package/python-cryptography (needs a Rust host toolchain for the target).
BUILDROOT_PYTHON_PACKAGES = {"grpcio", "protobuf", "transitions", "psutil", "pyroute2", "cryptography"}
# Symbols from Buildroot that the tree's Config.in files may use.
BUILDROOT_SYMBOLS = {f"BR2_PACKAGE_PYTHON_{name.upper()}" for name in BUILDROOT_PYTHON_PACKAGES} | {
    "BR2_PACKAGE_PYTHON3",
    "BR2_PACKAGE_PYTHON_GRPCIO_ARCH_SUPPORTS",
    "BR2_PACKAGE_HOST_PROTOBUF_ARCH_SUPPORTS",
    "BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS",
    "BR2_INSTALL_LIBSTDCPP",
    "BR2_PACKAGE_NFTABLES",  # package/nftables (libnftables), the network manager's firewall
    "BR2_PACKAGE_DNSMASQ",  # package/dnsmasq, one DNS server per provider network
    "BR2_PACKAGE_RUNC",  # package/runc, which starts the instances
    "BR2_PACKAGE_HOST_GO_TARGET_ARCH_SUPPORTS",  # runc's dependencies
    "BR2_PACKAGE_HOST_GO_TARGET_CGO_LINKING_SUPPORTS",
    "BR2_TOOLCHAIN_HEADERS_AT_LEAST_3_12",  # nftables' dependency
    # package/python3's optional modules: sqlite3 (the image store), ssl (https downloads
    # through urllib), zlib (gzip/tarfile layers, log parts).
    "BR2_PACKAGE_PYTHON3_SQLITE",
    "BR2_PACKAGE_PYTHON3_SSL",
    "BR2_PACKAGE_PYTHON3_ZLIB",
}


# Runtime packages the agent's package selects besides pyproject's dependencies: runc, the
# network manager's programs (NETWORK.md) and python3's optional modules the agent imports
# (tests/test_yocto.py maps each of them to the Yocto recipe's RDEPENDS).
SYSTEM_RUNTIME = {"BR2_PACKAGE_RUNC", "BR2_PACKAGE_NFTABLES", "BR2_PACKAGE_DNSMASQ",
                  "BR2_PACKAGE_PYTHON3_SQLITE", "BR2_PACKAGE_PYTHON3_SSL", "BR2_PACKAGE_PYTHON3_ZLIB"}


def external_name() -> str:
    fields = dict(line.split(":", 1) for line in (TREE / "external.desc").read_text().splitlines())
    return fields["name"].strip()


def packages() -> List[Path]:
    return sorted(path for path in (TREE / "package").iterdir() if path.is_dir())


def prefix(package: Path) -> str:
    return package.name.upper().replace("-", "_")


def mk_variables(text: str) -> Dict[str, str]:
    """``NAME = value`` assignments, continuation lines joined (good enough for these files)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return {m.group(1): m.group(3).strip()
            for m in re.finditer(r"^([A-Z0-9_]+)\s*(\+|:|\?|)=[ \t]*(.*)$", joined, flags=re.MULTILINE)}


def config_entries(text: str) -> Iterator[Tuple[str, List[str]]]:
    """(symbol, its attribute lines) for every ``config`` entry of a Config.in."""
    symbol = None
    lines: List[str] = []
    for line in text.splitlines():
        m = re.match(r"^(?:menu)?config\s+(\w+)", line)
        if m or (line and not line[0].isspace() and symbol):
            if symbol:
                yield symbol, lines
            symbol, lines = (m.group(1), []) if m else (None, [])
            continue
        if symbol:
            lines.append(line)
    if symbol:
        yield symbol, lines


def every_tree_file() -> List[Path]:
    return sorted(path for path in TREE.rglob("*") if path.is_file())


# Agreement with pyproject.toml.


def test_the_package_version_is_pyprojects() -> None:
    variables = mk_variables((TREE / "package/python-aos-sm/python-aos-sm.mk").read_text())
    assert variables["PYTHON_AOS_SM_VERSION"] == PYPROJECT["project"]["version"]
    assert variables["PYTHON_AOS_SM_LICENSE"] == PYPROJECT["project"]["license"]["text"]


def test_the_package_selects_exactly_pyprojects_dependencies() -> None:
    names = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in PYPROJECT["project"]["dependencies"]}
    text = (TREE / "package/python-aos-sm/Config.in").read_text()
    selected = set(re.findall(r"^\tselect (BR2_PACKAGE_\w+)", text, flags=re.MULTILINE))
    # Besides the Python dependencies, runc, the network manager's programs and python3 modules.
    assert selected - SYSTEM_RUNTIME == {f"BR2_PACKAGE_PYTHON_{name.replace('-', '_').upper()}" for name in names}
    assert SYSTEM_RUNTIME <= selected
    # Each is either Buildroot's or has a recipe here.
    ours = {p.name.replace("python-", "", 1) for p in packages()}
    assert names <= BUILDROOT_PYTHON_PACKAGES | ours, names - BUILDROOT_PYTHON_PACKAGES - ours


def test_the_cgroupspy_recipe_is_at_least_what_pyproject_asks_for() -> None:
    wanted = next(dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("cgroupspy"))
    floor = tuple(int(x) for x in re.findall(r"\d+", wanted))
    version = mk_variables((TREE / "package/python-cgroupspy/python-cgroupspy.mk").read_text())[
        "PYTHON_CGROUPSPY_VERSION"]
    assert tuple(int(x) for x in version.split(".")) >= floor


# Names.


def test_external_desc_names_the_tree_and_the_tree_uses_that_name() -> None:
    name = external_name()
    assert re.fullmatch(r"[A-Za-z0-9_]+", name)
    for path in (TREE / "Config.in", TREE / "external.mk", *(p / f"{p.name}.mk" for p in packages())):
        for used in re.findall(r"BR2_EXTERNAL_(\w+?)_PATH", path.read_text()):
            assert used == name, f"{path}: BR2_EXTERNAL_{used}_PATH, the tree is {name}"
    assert (TREE / "external.mk").read_text() == \
        f"include $(sort $(wildcard $(BR2_EXTERNAL_{name}_PATH)/package/*/*.mk))\n"


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_package_files_and_symbols_follow_the_package_name(package: Path) -> None:
    assert (package / f"{package.name}.mk").is_file()
    entries = dict(config_entries((package / "Config.in").read_text()))
    assert f"BR2_PACKAGE_{prefix(package)}" in entries
    assert re.search(rf'^\tbool "{re.escape(package.name)}"$', (package / "Config.in").read_text(), re.MULTILINE)
    # Every variable the .mk sets or defines carries the package's prefix.
    for lineno, line in enumerate((package / f"{package.name}.mk").read_text().splitlines(), 1):
        m = re.match(r"^(?:define\s+)?([A-Z0-9_]+_[A-Z0-9_]+)", line)
        if m:
            assert re.match(rf"(HOST_)?{prefix(package)}_", m.group(1)), f"{package.name}.mk:{lineno}: {line}"
    # Python modules are named python-<name> (Buildroot's python-package policy).
    assert package.name.startswith("python-")
    assert (package / f"{package.name}.mk").read_text().rstrip().endswith("$(eval $(python-package))")


def test_every_config_symbol_used_is_defined_here_or_by_buildroot() -> None:
    defined: Set[str] = set()
    used: Set[str] = set()
    for path in TREE.rglob("Config.in"):
        text = path.read_text()
        defined |= set(re.findall(r"^config (BR2_\w+)", text, flags=re.MULTILINE))
        used |= set(re.findall(r"^\t(?:select|depends on)\s+!?(BR2_\w+)", text, flags=re.MULTILINE))
        used |= set(re.findall(r"^if (BR2_\w+)", text, flags=re.MULTILINE))
    assert used - defined <= BUILDROOT_SYMBOLS, used - defined - BUILDROOT_SYMBOLS


def test_the_defconfig_builds_the_agent_for_qemu_aarch64_virt_with_hashes_checked() -> None:
    defconfigs = list((TREE / "configs").iterdir())
    assert [p.name for p in defconfigs] == ["aos_sm_qemu_aarch64_virt_defconfig"]
    lines = defconfigs[0].read_text().splitlines()
    for line in lines:
        assert re.fullmatch(r"BR2_\w+=.+|# BR2_\w+ is not set", line), line
    assert "BR2_aarch64=y" in lines
    assert "BR2_DOWNLOAD_FORCE_CHECK_HASHES=y" in lines
    assert "BR2_PACKAGE_PYTHON3=y" in lines and "BR2_PACKAGE_PYTHON_AOS_SM=y" in lines
    assert "BR2_TOOLCHAIN_BUILDROOT_CXX=y" in lines  # python-grpcio depends on C++
    assert 'BR2_LINUX_KERNEL_CUSTOM_CONFIG_FILE="board/qemu/aarch64-virt/linux.config"' in lines
    symbols = [line.split("=")[0] for line in lines if "=" in line]
    assert len(symbols) == len(set(symbols))


# Referenced files exist.


def test_every_file_the_tree_references_exists() -> None:
    name = external_name()
    for match in re.finditer(r'source "\$BR2_EXTERNAL_(\w+)_PATH/([^"]+)"', (TREE / "Config.in").read_text()):
        assert (TREE / match.group(2)).is_file(), match.group(0)
    for path in every_tree_file():
        for relative in re.findall(rf"\$\(BR2_EXTERNAL_{name}_PATH\)/([^\s\"*)]+)", path.read_text()):
            if relative != "..":
                assert (TREE / relative).exists(), f"{path.relative_to(TREE)}: {relative}"
    mk = (TREE / "package/python-aos-sm/python-aos-sm.mk").read_text()
    variables = mk_variables(mk)
    site = variables["PYTHON_AOS_SM_SITE"].replace(f"$(BR2_EXTERNAL_{name}_PATH)", str(TREE))
    source = Path(site).resolve()
    assert source == ROOT and variables["PYTHON_AOS_SM_SITE_METHOD"] == "local"
    installed = re.findall(r"\$\(@D\)/(\S+)", mk)
    assert {"packaging/aos_servicemanager.cfg", "packaging/S95aos-sm", "packaging/aos-sm.service"} <= set(installed)
    for relative in installed:
        assert (source / relative).is_file(), relative
    # The rsync exclusions keep what the build and the install hooks need.
    excluded = [arg for arg in shlex.split(variables["PYTHON_AOS_SM_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS"])
                if arg != "--exclude"]
    needed = ["pyproject.toml", "README.md", "agent", "hw", "statemachine", "proto/gen", *installed]
    for path in needed:
        first = path.split("/")[0]
        assert f"/{first}" not in excluded and first not in excluded, (path, excluded)
    for package in packages():
        license_files = mk_variables((package / f"{package.name}.mk").read_text()).get(
            f"{prefix(package)}_LICENSE_FILES", "")
        hash_file = package / f"{package.name}.hash"
        for license_file in license_files.split():
            assert re.search(rf"^sha256  [0-9a-f]{{64}}  {re.escape(license_file)}$", hash_file.read_text(),
                             re.MULTILINE), (package.name, license_file)


def test_downloaded_packages_have_a_hash_for_their_tarball() -> None:
    for package in packages():
        variables = mk_variables((package / f"{package.name}.mk").read_text())
        if variables.get(f"{prefix(package)}_SITE_METHOD") == "local":
            continue  # nothing is downloaded
        version = variables[f"{prefix(package)}_VERSION"]
        tarball = variables[f"{prefix(package)}_SOURCE"].replace(f"$({prefix(package)}_VERSION)", version)
        assert variables[f"{prefix(package)}_SITE"].startswith("https://")
        text = (package / f"{package.name}.hash").read_text()
        assert re.search(rf"^sha256  [0-9a-f]{{64}}  {re.escape(tarball)}$", text, re.MULTILINE)


# check-package's layout rules.


def test_every_file_is_clean_text() -> None:
    for path in every_tree_file():
        text = path.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: newline at EOF, no empty last line"
        assert "\n\n\n" not in text, f"{path}: consecutive empty lines"
        for lineno, line in enumerate(text.splitlines(), 1):
            assert line == line.rstrip(), f"{path}:{lineno}: trailing whitespace"
            assert line.isascii(), f"{path}:{lineno}: non-ASCII"


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_mk_layout(package: Path) -> None:
    lines = (package / f"{package.name}.mk").read_text().splitlines()
    assert lines[:6] == ["#" * 80, "#", f"# {package.name}", "#", "#" * 80, ""]
    in_define = continued = False
    for lineno, line in enumerate(lines, 1):
        where = f"{package.name}.mk:{lineno}: {line!r}"
        if re.match(r"^define\s", line):
            in_define = True
            continue
        if re.match(r"^endef\b", line):
            in_define = False
            continue
        if in_define or continued:
            assert line.startswith("\t") or (in_define and line.lstrip().startswith("#")), where
        elif line.strip():
            assert not line.startswith(("\t", " ")), where
        continued = line.endswith("\\") and not line.startswith("#")
        if continued:
            assert re.search(r"[^ \t] \\$", line), f"{where}: one space before the backslash"
        assert not re.search(r"[^$]\$\{\w+\}", line), f"{where}: use $() not ${{}}"
        assert not re.match(r"^ifn?def\s", line.strip()), where
    variables = mk_variables("\n".join(lines))
    source = variables.get(f"{prefix(package)}_SOURCE")
    # Buildroot's default _SOURCE is <name>-$(VERSION).tar.gz: spelling it out is flagged.
    assert source != f"{package.name}-$({prefix(package)}_VERSION).tar.gz"


@pytest.mark.parametrize("path", sorted(TREE.rglob("Config.in")), ids=lambda p: str(p.relative_to(TREE)))
def test_config_in_layout(path: Path) -> None:
    order = {"bool": 1, "prompt": 1, "string": 1, "default": 2, "depends": 3, "select": 4, "help": 5}
    state, in_help = 0, False
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.name}:{lineno}: {line!r}"
        if not line.strip() or line.strip().startswith("#"):
            continue
        word = line.split()[0]
        if word in ("config", "menuconfig", "comment", "menu", "endmenu", "if", "endif", "source", "choice"):
            assert line.startswith(word), f"{where}: not indented"
            state, in_help = 0, False
            continue
        if in_help:
            assert re.fullmatch(r"\t  .{,62}", line) or re.fullmatch(r"\t  (https?|git)://\S*", line), \
                f"{where}: help text is <tab><2 spaces><at most 62 chars>"
            continue
        assert word in order, where
        assert line.startswith("\t" + word), f"{where}: one tab"
        assert order[word] >= state, f"{where}: order is type, default, depends on, select, help"
        assert line != "\tdefault n", f"{where}: redundant"
        state, in_help = order[word], word == "help"


def test_hash_files_have_three_fields_two_spaces_apart() -> None:
    for path in TREE.rglob("*.hash"):
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            kind, digest, name = line.split()
            assert line == f"{kind}  {digest}  {name}"
            assert kind == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest), line


def test_the_qemu_image_talks_to_a_cm_on_the_host() -> None:
    lines = (TREE / "configs/aos_sm_qemu_aarch64_virt_defconfig").read_text().splitlines()
    overlay = next(line for line in lines if line.startswith("BR2_ROOTFS_OVERLAY="))
    directory = TREE / overlay.split("=", 1)[1].strip('"').replace(f"$(BR2_EXTERNAL_{external_name()}_PATH)/", "")
    config = parse_config((directory / "etc/aos/aos_servicemanager.cfg").read_text())
    assert config.warnings == ()
    # 10.0.2.2 is the host on QEMU's user network.
    assert (config.cm_server_url, config.tls_mode) == ("10.0.2.2:8093", "plaintext")
