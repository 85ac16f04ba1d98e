"""The item config parser: every key, defaults, case-insensitivity, and bad values naming the key;
and the image store exposing it on the pulled image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from oci_fixture import BlobServer, build_image

from aos_sm.agent.errors import AosCode, ItemConfigError
from aos_sm.agent.launcher.blobs import BlobStore
from aos_sm.agent.launcher.image import ImageStore, parse_manifest
from aos_sm.agent.launcher.itemconfig import (ItemConfig, Quotas, ResourceRequest, RunParameters,
                                              parse_item_config)


def parse(document: Any) -> ItemConfig:
    return parse_item_config(json.dumps(document).encode())


FULL: Dict[str, Any] = {
    "created": "2024-12-31T23:59:59Z",
    "author": "Aos cloud",
    "balancingPolicy": "enabled",
    "runtimes": ["runc"],
    "hostname": "my-service",
    "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": 16384},
    "quotas": {"cpuDMIPSLimit": 5000, "ramLimit": 64 << 20, "pidsLimit": 100, "noFileLimit": 256,
               "tmpLimit": 8 << 20, "downloadSpeed": 1000, "uploadSpeed": 500, "downloadLimit": 10 ** 9,
               "uploadLimit": 0, "storageLimit": 1000, "stateLimit": 100},
    "resources": ["camera", {"name": "gpio", "mode": "wr"}],
    "runParameters": {"startInterval": "PT10S", "startBurst": 5, "restartInterval": "PT2S"},
    "offlineTTL": "P1DT3H",
    "permissions": [{"name": "vis", "permissions": [{"function": "get", "permissions": "r"}]}],
    "alertRules": {"ram": {"minTimeout": "PT1M", "minThreshold": 10, "maxThreshold": 20}},
}


def test_every_key_is_read() -> None:
    config = parse(FULL)
    assert config.hostname == "my-service"
    assert dict(config.sysctl) == {"net.ipv4.ip_forward": "1", "kernel.msgmax": "16384"}
    assert config.quotas == Quotas(cpu_dmips_limit=5000, ram_limit=64 << 20, pids_limit=100, no_file_limit=256,
                                   tmp_limit=8 << 20, download_speed=1000, upload_speed=500,
                                   download_limit=10 ** 9, upload_limit=0)
    assert config.resources == (ResourceRequest("camera", None), ResourceRequest("gpio", "rw"))
    assert config.run_parameters == RunParameters(10.0, 5, 2.0)
    assert config.offline_ttl == 27 * 3600.0
    assert dict(config.permissions) == {"vis": [{"function": "get", "permissions": "r"}]}


def test_an_empty_config_takes_the_reference_defaults() -> None:
    config = parse({})
    assert config == ItemConfig()
    assert config.hostname is None and config.offline_ttl is None
    assert config.quotas == Quotas()
    assert config.run_parameters == RunParameters(start_interval=5.0, start_burst=3, restart_interval=1.0)
    assert config.resources == () and dict(config.sysctl) == {} and dict(config.permissions) == {}


def test_keys_are_case_insensitive_at_every_level_and_null_is_absent() -> None:
    config = parse({"HOSTNAME": "h", "Quotas": {"CPUDMIPSLIMIT": 10, "ramlimit": None},
                    "RUNPARAMETERS": {"STARTBURST": 7, "startinterval": None}, "offlinettl": None,
                    "Resources": [{"NAME": "x", "MODE": "r"}], "sysctl": None})
    assert config.hostname == "h"
    assert config.quotas == Quotas(cpu_dmips_limit=10)
    assert config.run_parameters == RunParameters(5.0, 7, 1.0)
    assert config.offline_ttl is None
    assert config.resources == (ResourceRequest("x", "r"),)


@pytest.mark.parametrize("text, seconds", [("PT1M30S", 90.0), ("1m30s", 90.0), (2.5, 2.5), ("500ms", 0.5)])
def test_durations_take_the_agents_syntax(text: Any, seconds: float) -> None:
    config = parse({"runParameters": {"restartInterval": text}, "offlineTTL": text})
    assert config.run_parameters.restart_interval == seconds
    assert config.offline_ttl == seconds


def test_zero_offline_ttl_and_zero_start_burst_mean_the_default() -> None:
    config = parse({"offlineTTL": "PT0S", "runParameters": {"startBurst": 0}})
    assert config.offline_ttl is None
    assert config.run_parameters.start_burst == 3


def test_permissions_as_an_object_are_kept_raw() -> None:
    assert dict(parse({"permissions": {"vis": {"get": "r"}}}).permissions) == {"vis": {"get": "r"}}


def test_integral_floats_are_integers() -> None:
    assert parse({"quotas": {"ramLimit": 1024.0}}).quotas.ram_limit == 1024


BAD = [
    ("not json", "(document)"),
    ([], "(document)"),
    ({"hostname": 5}, "hostname"),
    ({"hostname": "bad host"}, "hostname"),
    ({"hostname": "x" * 65}, "hostname"),
    ({"sysctl": []}, "sysctl"),
    ({"sysctl": {"net.ipv4.ip_forward": [1]}}, "sysctl.net.ipv4.ip_forward"),
    ({"sysctl": {"../etc": "1"}}, "sysctl.../etc"),
    ({"sysctl": {"kernel.x": True}}, "sysctl.kernel.x"),
    ({"quotas": 3}, "quotas"),
    ({"quotas": {"cpuDMIPSLimit": "1000"}}, "quotas.cpuDMIPSLimit"),
    ({"quotas": {"cpuDMIPSLimit": 0}}, "quotas.cpuDMIPSLimit"),
    ({"quotas": {"ramLimit": -1}}, "quotas.ramLimit"),
    ({"quotas": {"ramLimit": 1.5}}, "quotas.ramLimit"),
    ({"quotas": {"pidsLimit": True}}, "quotas.pidsLimit"),
    ({"quotas": {"noFileLimit": 0}}, "quotas.noFileLimit"),
    ({"quotas": {"tmpLimit": 2 ** 64}}, "quotas.tmpLimit"),
    ({"quotas": {"downloadSpeed": -5}}, "quotas.downloadSpeed"),
    ({"quotas": {"uploadSpeed": "fast"}}, "quotas.uploadSpeed"),
    ({"quotas": {"downloadLimit": {}}}, "quotas.downloadLimit"),
    ({"quotas": {"uploadLimit": -1}}, "quotas.uploadLimit"),
    ({"resources": "camera"}, "resources"),
    ({"resources": [3]}, "resources[0]"),
    ({"resources": ["a", {"mode": "r"}]}, "resources[1].name"),
    ({"resources": [{"name": "a", "mode": "x"}]}, "resources[0].mode"),
    ({"resources": [{"name": "a", "mode": "rr"}]}, "resources[0].mode"),
    ({"resources": ["a", "a"]}, "resources[1]"),
    ({"runParameters": []}, "runParameters"),
    ({"runParameters": {"startInterval": "soon"}}, "runParameters.startInterval"),
    ({"runParameters": {"startInterval": "PT0S"}}, "runParameters.startInterval"),
    ({"runParameters": {"startBurst": -1}}, "runParameters.startBurst"),
    ({"runParameters": {"startBurst": "3"}}, "runParameters.startBurst"),
    ({"runParameters": {"restartInterval": "-PT1S"}}, "runParameters.restartInterval"),
    ({"offlineTTL": "P1M"}, "offlineTTL"),
    ({"offlineTTL": [1]}, "offlineTTL"),
    ({"permissions": "all"}, "permissions"),
    ({"permissions": [{"permissions": []}]}, "permissions[0].name"),
    ({"permissions": [5]}, "permissions[0]"),
]


@pytest.mark.parametrize("document, key", BAD, ids=[f"{i}:{case[1]}" for i, case in enumerate(BAD)])
def test_a_bad_value_fails_with_invalid_argument_naming_the_key(document: Any, key: str) -> None:
    data = document.encode() if isinstance(document, str) else json.dumps(document).encode()
    with pytest.raises(ItemConfigError) as caught:
        parse_item_config(data)
    assert caught.value.key == key
    info = caught.value.to_error_info()
    assert info.aos_code == AosCode.INVALID_ARGUMENT
    assert info.message.startswith(f"item config {key}:")


def test_keys_that_are_cms_business_are_ignored_whatever_their_value() -> None:
    assert parse({"balancingPolicy": 5, "alertRules": "x", "requestedResources": [], "runtimes": {},
                  "skipResourceLimits": "yes", "allowedConnections": 1}) == ItemConfig()


# --- the manifest and the image store


def _manifest(**extra: Any) -> bytes:
    digest = "sha256:" + "a" * 64
    return json.dumps({"schemaVersion": 2, "config": {"digest": digest}, "layers": [], **extra}).encode()


def test_the_manifest_names_the_item_config_under_either_key_preferring_aos_item_config() -> None:
    new, old = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    for key, digest in (("aosItemConfig", new), ("aosService", old)):
        item = parse_manifest(_manifest(**{key: {"digest": digest}})).item_config
        assert item is not None and item.digest == digest
    both = parse_manifest(_manifest(aosService={"digest": old}, aosItemConfig={"digest": new}))
    assert both.item_config is not None and both.item_config.digest == new
    assert parse_manifest(_manifest()).item_config is None


def _pull(tmp_path: Path, layer: bytes, **options: Any) -> Any:
    image = build_image([layer], cmd=["true"], **options)
    server = BlobServer(tmp_path / "served")
    try:
        urls = server.publish(image)
        store = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"))

        def resolve(digests: List[str]) -> List[str]:
            return [urls[d] for d in digests]

        return store.pull(image.manifest_digest, resolve)
    finally:
        server.close()


@pytest.fixture
def tiny_layer() -> bytes:
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("key", ["aosItemConfig", "aosService"])
def test_the_pulled_image_carries_its_parsed_item_config(tmp_path: Path, tiny_layer: bytes, key: str) -> None:
    image = _pull(tmp_path, tiny_layer, item_config={"hostname": "from-item", "quotas": {"ramLimit": 4096}},
                  item_config_key=key)
    assert image.item_config.hostname == "from-item"
    assert image.item_config.quotas.ram_limit == 4096
    assert len(image.blobs) == 3  # manifest, config, item config: kept (the layer blob goes once unpacked)


def test_an_image_without_item_config_has_the_defaults(tmp_path: Path, tiny_layer: bytes) -> None:
    assert _pull(tmp_path, tiny_layer).item_config == ItemConfig()


def test_a_bad_item_config_fails_the_pull_naming_the_key(tmp_path: Path, tiny_layer: bytes) -> None:
    with pytest.raises(ItemConfigError, match="quotas.pidsLimit"):
        _pull(tmp_path, tiny_layer, item_config={"quotas": {"pidsLimit": -3}})
