"""The Yocto layer yocto/meta-aos-sm, checked without bitbake (it cannot be fetched here).

What is held: oelint-adv finds nothing in the layer; the aos-sm recipe agrees with pyproject.toml
(version, license, build backend) and with the Buildroot package (the same files installed, with
the same modes, and the same runtime dependencies, through one mapping table); the cgroupspy
recipe fetches the same sdist Buildroot hashes; the two kernel fragments list the same options.
The .bb, .mk and Config.in files are read with the small parsers below.
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "yocto/meta-aos-sm"
RECIPES = LAYER / "recipes-core/aos-sm"
CGROUPSPY_RECIPES = LAYER / "recipes-devtools/python"
YOCTO_FRAGMENT = LAYER / "recipes-kernel/linux/linux-yocto/aos-sm.cfg"
BBAPPEND = LAYER / "recipes-kernel/linux/linux-yocto_%.bbappend"
BUILDROOT = ROOT / "buildroot"
BUILDROOT_PACKAGE = BUILDROOT / "package/python-aos-sm"
BUILDROOT_FRAGMENT = BUILDROOT / "board/qemu-aarch64-virt/linux-network.fragment"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What the agent needs at run time, each once: its Buildroot symbol (selected by
# package/python-aos-sm/Config.in), its Yocto package (in the recipe's RDEPENDS) and the layer
# whose recipe provides it (in layer.conf's LAYERDEPENDS; "aos-sm" is this layer).
RUNTIME: Dict[str, Tuple[str, str, str]] = {
    # pyproject.toml's dependencies.
    "grpcio": ("BR2_PACKAGE_PYTHON_GRPCIO", "python3-grpcio", "meta-python"),
    "protobuf": ("BR2_PACKAGE_PYTHON_PROTOBUF", "python3-protobuf", "meta-python"),
    "transitions": ("BR2_PACKAGE_PYTHON_TRANSITIONS", "python3-transitions", "meta-python"),
    "psutil": ("BR2_PACKAGE_PYTHON_PSUTIL", "python3-psutil", "core"),
    "pyroute2": ("BR2_PACKAGE_PYTHON_PYROUTE2", "python3-pyroute2", "meta-python"),
    "cgroupspy": ("BR2_PACKAGE_PYTHON_CGROUPSPY", "python3-cgroupspy", "aos-sm"),
    "cryptography": ("BR2_PACKAGE_PYTHON_CRYPTOGRAPHY", "python3-cryptography", "core"),
    # Instances run with runc: meta-virtualization's runc-opencontainers RPROVIDES virtual-runc.
    "runc": ("BR2_PACKAGE_RUNC", "virtual-runc", "virtualization-layer"),
    # The network manager (NETWORK.md, agent/network/prerequisites.py): libnftables through
    # ctypes (meta-networking packages the library with nft in "nftables") and one dnsmasq per
    # network. Links, addresses and tc go over rtnetlink from Python: no iproute2.
    "nftables": ("BR2_PACKAGE_NFTABLES", "nftables", "networking-layer"),
    "dnsmasq": ("BR2_PACKAGE_DNSMASQ", "dnsmasq", "networking-layer"),
    # python3 modules Buildroot builds only when asked; oe-core splits them into packages.
    "sqlite3": ("BR2_PACKAGE_PYTHON3_SQLITE", "python3-sqlite3", "core"),
    "ssl": ("BR2_PACKAGE_PYTHON3_SSL", "python3-io", "core"),  # https downloads (urllib)
    "zlib": ("BR2_PACKAGE_PYTHON3_ZLIB", "python3-compression", "core"),  # gzip, tarfile
}
# meta-python and meta-networking need it; the recipe uses nothing from it directly.
INDIRECT_LAYERS = {"openembedded-layer"}

# The package of every standard library module the agent imports, from oe-core's
# meta/recipes-devtools/python/python3/python3-manifest.json (master of 2026-08; the same
# split since kirkstone). python3-core comes with every Python recipe (setuptools3-base).
# Buildroot's python3 has all of them but the optional ones in RUNTIME above.
STDLIB_PACKAGES: Dict[str, str] = {
    "__future__": "python3-core", "argparse": "python3-core", "collections": "python3-core",
    "concurrent": "python3-asyncio", "contextlib": "python3-core", "ctypes": "python3-ctypes",
    "dataclasses": "python3-core", "datetime": "python3-datetime", "difflib": "python3-difflib",
    "enum": "python3-core",
    "errno": "python3-core", "faulthandler": "python3-core", "fractions": "python3-numbers",
    "functools": "python3-core", "gzip": "python3-compression", "hashlib": "python3-crypt",
    "http": "python3-netclient", "importlib": "python3-core", "io": "python3-core", "ipaddress": "python3-core",
    "json": "python3-json", "logging": "python3-logging", "math": "python3-core",
    "os": "python3-core", "pathlib": "python3-core", "platform": "python3-core",
    "posixpath": "python3-core", "queue": "python3-threading", "random": "python3-math",
    "re": "python3-core", "secrets": "python3-netclient", "shutil": "python3-core",
    "signal": "python3-core", "socket": "python3-io", "sqlite3": "python3-sqlite3", "ssl": "python3-io",
    "stat": "python3-core", "struct": "python3-core", "subprocess": "python3-core",
    "sys": "python3-core", "tarfile": "python3-compression", "tempfile": "python3-io",
    "textwrap": "python3-core", "threading": "python3-core", "time": "python3-core", "types": "python3-core",
    "typing": "python3-core", "urllib.parse": "python3-core", "urllib.error": "python3-netclient",
    "urllib.request": "python3-netclient", "uuid": "python3-netclient", "zlib": "python3-core",
}

# Directories as bitbake.conf and the classes define them, with usrmerge (oe-core's systemd has
# required it since 2023, nanbield), as Buildroot lays out its target.
YOCTO_DIRS = {"${sysconfdir}": "/etc", "${bindir}": "/usr/bin", "${INIT_D_DIR}": "/etc/init.d",
              "${systemd_system_unitdir}": "/usr/lib/systemd/system"}

# The releases oelint-adv checks the layer against: exactly those layer.conf claims.
# Rules left out, and why:
# - oelint.vars.homepageping fetches HOMEPAGE: the suite runs offline.
# - oelint.var.bbclassextend (info) asks for native/nativesdk variants; aos-sm is a daemon for
#   the target image (the cgroupspy recipe has them). The rule reports at the file's first
#   line, where no inline suppression comment can precede it.
OELINT_SUPPRESSED = ("oelint.vars.homepageping", "oelint.var.bbclassextend")


# Parsers.


def bb_assignments(text: str) -> List[Tuple[str, str, str]]:
    """(name with overrides and flag, operator, value) of every assignment in a .bb/.conf,
    continuation lines joined; functions are skipped."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for m in re.finditer(r'^([A-Za-z0-9_${}\-:\[\]]+)\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*"(.*)"\s*$',
                         joined, flags=re.MULTILINE):
        found.append((m.group(1), m.group(2), " ".join(m.group(3).split())))
    return found


def bb_value(text: str, name: str) -> str:
    values = [value for key, _, value in bb_assignments(text) if key == name]
    assert values, f"{name} is not set"
    return " ".join(values)


def bb_function(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}\s*\(\)\s*\{{\n(.*?)^\}}", text, flags=re.MULTILINE | re.DOTALL)
    assert m, f"no {name}() in the recipe"
    return m.group(1)


def inherited(text: str) -> Set[str]:
    return {name for line in re.findall(r"^inherit\s+(.+)$", text, flags=re.MULTILINE) for name in line.split()}


def the_recipe() -> Path:
    recipes = sorted(RECIPES.glob("aos-sm_*.bb"))
    assert len(recipes) == 1, recipes
    return recipes[0]


def the_cgroupspy_recipe() -> Path:
    recipes = sorted(CGROUPSPY_RECIPES.glob("python3-cgroupspy_*.bb"))
    assert len(recipes) == 1, recipes
    return recipes[0]


def mk_defines(text: str) -> Dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^define (\w+)\n(.*?)^endef", text, re.MULTILINE | re.DOTALL)}


def installs(body: str, source_dir: str, dest_dir: str) -> List[Tuple[str, int, str]]:
    """(destination, mode, source relative to the checkout) of each ``install -m MODE SRC DEST``."""
    joined = re.sub(r"\\\n\s*", " ", body)
    found = []
    for m in re.finditer(r"(?:^|\s)(?:install|\$\(INSTALL\))\s+(?:-D\s+)?-m\s+(0?[0-7]{3,4})\s+(\S+)\s+(\S+)",
                         joined):
        mode, source, dest = m.groups()
        assert source.startswith(source_dir + "/") and dest.startswith(dest_dir), m.group(0)
        found.append((dest[len(dest_dir):], int(mode, 8), source[len(source_dir) + 1:]))
    return found


def expand_yocto_dirs(path: str) -> str:
    for variable, directory in YOCTO_DIRS.items():
        path = path.replace(variable, directory)
    assert "$" not in path, f"{path}: a directory variable the test does not know"
    return path


def kernel_options(path: Path) -> Dict[str, str]:
    options: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.split("=", 1)
        assert re.fullmatch(r"CONFIG_[A-Z0-9_]+", name) and name not in options, line
        options[name] = value
    return options


# oelint-adv.


@pytest.mark.host_only("oelint-adv is on PyPI only: Debian bookworm, whose packages the arm64 suite "
                       "installs (.ci/arm64.sh TEST_PKGS), has no package of it")
def test_oelint_adv_finds_nothing_in_the_layer() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("oelint-adv needs Python 3.10 or later")
    files = sorted(str(p) for p in LAYER.rglob("*") if p.suffix in (".bb", ".bbappend", ".conf"))
    assert len(files) == 4, files
    releases = bb_value((LAYER / "conf/layer.conf").read_text(), "LAYERSERIES_COMPAT_aos-sm").split()
    for release in releases:
        suppressed = [arg for rule in OELINT_SUPPRESSED for arg in ("--suppress", rule)]
        result = subprocess.run([sys.executable, "-m", "oelint_adv", "--quiet", "--jobs", "1", "--release", release,
                                 *suppressed, *files], capture_output=True, text=True, timeout=300)
        # Every finding, errors to infos, fails: the layer has none.
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), (release, result.stderr)


# The layer.


def test_the_layer_is_for_current_releases_and_depends_on_the_layers_with_the_recipes() -> None:
    text = (LAYER / "conf/layer.conf").read_text()
    assert bb_value(text, "BBFILE_COLLECTIONS") == "aos-sm"
    # The supported releases of 2026-11: 5.0 scarthgap and 6.0 wrynose (LTS), 6.1 blacksail.
    assert bb_value(text, "LAYERSERIES_COMPAT_aos-sm").split() == ["scarthgap", "wrynose", "blacksail"]
    depends = set(bb_value(text, "LAYERDEPENDS_aos-sm").split())
    needed = {layer for _, _, layer in RUNTIME.values()} - {"aos-sm"}
    assert depends == needed | INDIRECT_LAYERS | {"core"}
    # Every recipe and bbappend is found by BBFILES.
    patterns = bb_value(text, "BBFILES").replace("${LAYERDIR}/", "").split()
    found = {p for pattern in patterns for p in LAYER.glob(pattern)}
    assert found == set(LAYER.rglob("*.bb")) | set(LAYER.rglob("*.bbappend"))


def test_every_file_is_clean_text() -> None:
    for path in sorted(p for p in LAYER.rglob("*") if p.is_file()):
        text = path.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: newline at EOF, no empty last line"
        for lineno, line in enumerate(text.splitlines(), 1):
            assert line == line.rstrip(), f"{path}:{lineno}: trailing whitespace"
            assert line.isascii() and "\t" not in line, f"{path}:{lineno}: non-ASCII or tab"


# The aos-sm recipe against pyproject.toml.


def test_the_recipe_version_and_license_are_pyprojects() -> None:
    recipe = the_recipe()
    text = recipe.read_text()
    assert recipe.name == f"aos-sm_{PYPROJECT['project']['version']}.bb"
    assert not re.search(r"^PV\b", text, flags=re.MULTILINE), "the version is the file name's"
    assert bb_value(text, "LICENSE") == PYPROJECT["project"]["license"]["text"]


def test_the_license_checksum_matches_the_file_in_this_checkout() -> None:
    """md5 as oe-core's insane.bbclass computes it: of the whole file, or of lines beginline
    to endline (counted from 1, newlines included)."""
    entries = bb_value(the_recipe().read_text(), "LIC_FILES_CHKSUM").split()
    assert entries
    for entry in entries:
        url, *params = entry.split(";")
        options = dict(param.split("=", 1) for param in params)
        assert url.startswith("file://")
        lines = (ROOT / url[len("file://"):]).read_bytes().splitlines(keepends=True)
        begin = int(options.get("beginline", 1))
        end = int(options.get("endline", len(lines)))
        chosen = lines[begin - 1:end]
        assert hashlib.md5(b"".join(chosen)).hexdigest() == options["md5"], entry
        assert PYPROJECT["project"]["license"]["text"].encode() in b"".join(chosen)


def test_the_recipe_builds_this_checkout_with_setuptools_pep517_backend() -> None:
    recipe = the_recipe()
    text = recipe.read_text()
    classes = inherited(text)
    # pyproject.toml alone, no setup.py: the PEP 517 class, not setuptools3 (which runs setup.py).
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert not (ROOT / "setup.py").exists()
    assert {"externalsrc", "python_setuptools_build_meta", "systemd", "update-rc.d"} <= classes
    assert "setuptools3" not in classes
    # EXTERNALSRC is a Python expression of THISDIR: it names this checkout.
    expression = bb_value(text, "EXTERNALSRC")
    m = re.fullmatch(r"\$\{@(.*)\}", expression)
    assert m, expression

    class Datastore:
        @staticmethod
        def getVar(name: str) -> str:  # noqa: N802 (bitbake's name)
            assert name == "THISDIR"
            return str(recipe.parent)

    import os

    assert Path(eval(m.group(1), {"os": os, "d": Datastore()})) == ROOT  # our own file's expression
    assert bb_value(text, "SRC_URI") == ""


# The aos-sm recipe against the Buildroot package.


def buildroot_installs() -> Set[Tuple[str, int, str, str]]:
    """(destination, mode, source, init system or 'any') the Buildroot package installs."""
    mk = (BUILDROOT_PACKAGE / "python-aos-sm.mk").read_text()
    defines = mk_defines(mk)
    hooks = re.findall(r"^PYTHON_AOS_SM_POST_INSTALL_TARGET_HOOKS \+= (\w+)$", mk, flags=re.MULTILINE)
    # Buildroot's pkg-generic runs <PKG>_INSTALL_INIT_SYSV for BusyBox/SysV init and
    # <PKG>_INSTALL_INIT_SYSTEMD for systemd.
    when = {**{hook: "any" for hook in hooks},
            "PYTHON_AOS_SM_INSTALL_INIT_SYSV": "sysv", "PYTHON_AOS_SM_INSTALL_INIT_SYSTEMD": "systemd"}
    assert set(defines) == set(when), (set(defines), set(when))
    found = {(dest, mode, source, when[name])
             for name, body in defines.items() for dest, mode, source in installs(body, "$(@D)", "$(TARGET_DIR)")}
    # The python-package infrastructure installs the wheel's console scripts into /usr/bin.
    assert mk_value(mk, "PYTHON_AOS_SM_SETUP_TYPE") == "setuptools"
    return found | entry_points()


def mk_value(text: str, name: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(.*)$", text, flags=re.MULTILINE)
    assert m, name
    return m.group(1).strip()


def entry_points() -> Set[Tuple[str, int, str, str]]:
    return {(f"/usr/bin/{name}", 0o755, "", "any") for name in PYPROJECT["project"]["scripts"]}


def yocto_installs() -> Set[Tuple[str, int, str, str]]:
    text = the_recipe().read_text()
    found = set()
    for dest, mode, source in installs(bb_function(text, "do_install:append"), "${S}", "${D}"):
        # systemd.bbclass keeps only the unit (systemd in DISTRO_FEATURES) or only the init
        # script (not).
        system = ("systemd" if dest.startswith("${systemd_system_unitdir}/")
                  else "sysv" if dest.startswith("${INIT_D_DIR}/") else "any")
        found.add((expand_yocto_dirs(dest), mode, source, system))
    # python_pep517's installer puts the wheel's console scripts into ${bindir}, mode 0755.
    assert "python_setuptools_build_meta" in inherited(text)
    return found | entry_points()


def sysv_start_link(text: str) -> Tuple[str, str]:
    """(init script path, the start link update-rc.d makes): ``defaults <start> <stop>``."""
    name = bb_value(text, "INITSCRIPT_NAME")
    params = bb_value(text, "INITSCRIPT_PARAMS").split()
    assert params[0] == "defaults" and len(params) in (2, 3), params
    return f"/etc/init.d/{name}", f"S{int(params[1]):02d}{name}"


def test_the_recipe_and_the_buildroot_package_install_the_same_files() -> None:
    ours, buildroot = yocto_installs(), buildroot_installs()
    # The one declared difference: Buildroot's init runs /etc/init.d/S??* itself, so the script
    # is installed under its start-order name; on Yocto the script is /etc/init.d/aos-sm and
    # update-rc.d makes the rc?.d/S95aos-sm links from INITSCRIPT_PARAMS. Same file, same mode,
    # same start position.
    script, link = sysv_start_link(the_recipe().read_text())
    ours = {(f"/etc/init.d/{link}" if dest == script else dest, mode, source, system)
            for dest, mode, source, system in ours}
    assert ours == buildroot
    assert {dest for dest, *_ in ours} == {
        "/usr/bin/aos-sm", "/etc/aos/aos_servicemanager.cfg",
        "/usr/lib/systemd/system/aos-sm.service", "/etc/init.d/S95aos-sm"}
    for _, _, source, _ in ours:
        assert source == "" or (ROOT / source).is_file(), source


def test_the_recipe_registers_what_it_installs() -> None:
    text = the_recipe().read_text()
    installed = {dest for dest, *_ in installs(bb_function(text, "do_install:append"), "${S}", "${D}")}
    assert bb_value(text, "CONFFILES:${PN}") == "${sysconfdir}/aos/aos_servicemanager.cfg"
    assert bb_value(text, "CONFFILES:${PN}") in installed
    assert f"${{systemd_system_unitdir}}/{bb_value(text, 'SYSTEMD_SERVICE:${PN}')}" in installed
    assert f"${{INIT_D_DIR}}/{bb_value(text, 'INITSCRIPT_NAME')}" in installed


def imported_stdlib_modules() -> Set[str]:
    """Standard library modules imported by what the wheel installs, by their dotted name
    where STDLIB_PACKAGES splits a package (urllib), else the top-level name."""
    found = set()
    for directory in ("agent", "hw", "statemachine", "proto/gen"):
        for path in (ROOT / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names:  # type: ignore[attr-defined]
                        two = ".".join(name.split(".")[:2])
                        found.add(two if two in STDLIB_PACKAGES else top)
    return found


def test_the_recipe_and_the_buildroot_package_need_the_same_runtime() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("sys.stdlib_module_names is new in Python 3.10")
    names = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in PYPROJECT["project"]["dependencies"]}
    assert names <= set(RUNTIME), names - set(RUNTIME)
    # Buildroot: the package selects exactly the table's symbols.
    config = (BUILDROOT_PACKAGE / "Config.in").read_text()
    selected = set(re.findall(r"^\tselect (BR2_PACKAGE_\w+)", config, flags=re.MULTILINE))
    assert selected == {symbol for symbol, _, _ in RUNTIME.values()}
    # Yocto: the table's packages, and the package of every standard library module imported.
    modules = imported_stdlib_modules()
    unknown = modules - set(STDLIB_PACKAGES)
    assert not unknown, f"add {sorted(unknown)} to STDLIB_PACKAGES from oe-core's python3-manifest.json"
    wanted = {package for _, package, _ in RUNTIME.values()} | {STDLIB_PACKAGES[m] for m in modules}
    rdepends = set(bb_value(the_recipe().read_text(), "RDEPENDS:${PN}").split())
    assert rdepends == wanted - {"python3-core"}


# The cgroupspy recipe.


def test_the_cgroupspy_recipe_fetches_the_sdist_buildroot_hashes() -> None:
    recipe = the_cgroupspy_recipe()
    text = recipe.read_text()
    version = recipe.stem.split("_", 1)[1]
    wanted = next(dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("cgroupspy"))
    floor = tuple(int(x) for x in re.findall(r"\d+", wanted))
    assert tuple(int(x) for x in version.split(".")) >= floor
    assert {"pypi", "setuptools3"} <= inherited(text)  # the sdist has a setup.py
    mk = (BUILDROOT / "package/python-cgroupspy/python-cgroupspy.mk").read_text()
    assert mk_value(mk, "PYTHON_CGROUPSPY_VERSION") == version
    assert mk_value(mk, "PYTHON_CGROUPSPY_LICENSE") == bb_value(text, "LICENSE")
    digests = dict(reversed(line.split()[1:]) for line in
                   (BUILDROOT / "package/python-cgroupspy/python-cgroupspy.hash").read_text().splitlines()
                   if line.startswith("sha256 "))
    assert bb_value(text, "SRC_URI[sha256sum]") == digests[f"cgroupspy-{version}.tar.gz"]
    assert re.fullmatch(r"file://LICENSE;md5=[0-9a-f]{32}", bb_value(text, "LIC_FILES_CHKSUM"))


# The kernel.


def test_the_kernel_fragments_list_the_same_options() -> None:
    ours, buildroot = kernel_options(YOCTO_FRAGMENT), kernel_options(BUILDROOT_FRAGMENT)
    assert ours == buildroot
    assert set(ours.values()) == {"y"}
    # What the launcher and runc need besides the network (agent/launcher/bundle.py, mounts.py).
    assert {"CONFIG_PID_NS", "CONFIG_IPC_NS", "CONFIG_UTS_NS", "CONFIG_NET_NS", "CONFIG_MEMCG",
            "CONFIG_CGROUP_PIDS", "CONFIG_CPUSETS", "CONFIG_CFS_BANDWIDTH", "CONFIG_OVERLAY_FS"} <= set(ours)


def test_the_bbappend_adds_the_fragment_when_the_distro_asks() -> None:
    text = BBAPPEND.read_text()
    directory = bb_value(text, "FILESEXTRAPATHS:prepend:df-aos-sm").replace("${THISDIR}", str(BBAPPEND.parent))
    (name,) = re.findall(r"file://(\S+)", bb_value(text, "SRC_URI:append:df-aos-sm"))
    assert Path(directory.rstrip(":")) / name == YOCTO_FRAGMENT
    layer = (LAYER / "conf/layer.conf").read_text()
    assert "distrooverrides" in re.findall(r'^INHERIT \+= "(\S+)"$', layer, flags=re.MULTILINE)
    assert bb_value(layer, "DISTRO_FEATURES_OVERRIDES") == "aos-sm"
    # Nothing of the bbappend applies without the override.
    for name, _, _ in bb_assignments(text):
        assert name.endswith(":df-aos-sm"), name

