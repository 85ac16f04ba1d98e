"""The demo image, the reasons a machine cannot run it, and reading it back from an OCI layout."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from aos_sm.agent.blobserver import BlobServer
from aos_sm.agent.demo_image import demo_image, real_service_problem, sha256
from aos_sm.agent.ocilayout import load_oci_layout, write_oci_layout


def test_the_image_is_the_same_every_time_and_its_blobs_match_their_digests() -> None:
    first, second = demo_image("arm64"), demo_image("arm64")
    assert first.manifest_digest == second.manifest_digest
    assert demo_image("amd64").manifest_digest != first.manifest_digest
    for digest, data in first.blobs.items():
        assert isinstance(data, bytes) and sha256(data) == digest
    manifest = json.loads(first.blobs[first.manifest_digest])  # type: ignore[arg-type]
    assert manifest["aosItemConfig"]["digest"] in first.blobs


def test_each_missing_prerequisite_is_named_with_what_to_do(tmp_path: Path) -> None:
    cgroups = tmp_path / "cgroup"
    (cgroups / "memory").mkdir(parents=True)
    shell = tmp_path / "sh"
    shell.write_text("")
    runc = {"runc": "/usr/sbin/runc"}.get
    assert real_service_problem(which=runc, euid=0, cgroup_root=cgroups, shell=shell) is None
    assert "root" in str(real_service_problem(which=runc, euid=1000, cgroup_root=cgroups, shell=shell))
    assert "apt-get install runc" in str(real_service_problem(which=lambda _n: None, euid=0, cgroup_root=cgroups,
                                                              shell=shell))
    assert "cgroup" in str(real_service_problem(which=runc, euid=0, cgroup_root=tmp_path / "none", shell=shell))
    assert "/bin/sh" not in str(real_service_problem(which=runc, euid=0, cgroup_root=cgroups, shell=shell))
    assert str(tmp_path / "nosh") in str(real_service_problem(which=runc, euid=0, cgroup_root=cgroups,
                                                              shell=tmp_path / "nosh"))


def test_a_layout_gives_back_the_image_by_name_or_first_and_the_blob_server_serves_it(tmp_path: Path) -> None:
    image = demo_image()
    blobs = {d: b for d, b in image.blobs.items() if isinstance(b, bytes)}
    write_oci_layout(tmp_path / "a", blobs, image.manifest_digest, ref="demo:1")
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    other = dict(index["manifests"][0], annotations={"org.opencontainers.image.ref.name": "other"})
    (tmp_path / "a" / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                           "manifests": [other, index["manifests"][0]]}))
    named = load_oci_layout(tmp_path / "a", "demo:1")
    first = load_oci_layout(tmp_path / "a")
    assert named.manifest_digest == first.manifest_digest == image.manifest_digest
    assert set(named.blobs) == set(blobs) and "demo:1" in named.description and "other" in first.description
    server = BlobServer()
    try:
        urls = server.publish(named.blobs)
        for digest, url in urls.items():
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert sha256(reply.read()) == digest
        try:
            urllib.request.urlopen(server.url("sha256:" + "0" * 64), timeout=10)
            raise AssertionError("an unknown digest was served")
        except urllib.error.HTTPError as err:
            assert err.code == 404
    finally:
        server.close()
