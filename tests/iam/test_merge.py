"""The node-info merge rule (IAM.md): IAM wins over the probes, the operator's config over IAM
with a warning, IAM's unset fields fall back."""

from __future__ import annotations

import json

from aos_sm.agent.config import parse_config
from aos_sm.agent.iam.merge import IAM_SOURCE, merge_node_info, source_of
from aos_sm.agent.iam.port import IamNodeInfo

IAM = IamNodeInfo(node_id="iam-node", node_type="main", max_dmips=29400, total_ram=4 << 30, os_name="linux",
                  os_version="6.6-aos", architecture="arm64", architecture_variant="v8")


def config(**keys: object):  # type: ignore[no-untyped-def]
    return parse_config(json.dumps({"tlsMode": "plaintext", **keys}))


def test_without_operator_values_every_identity_field_is_iams() -> None:
    merged = merge_node_info(config(), IAM)
    got = merged.config
    assert (got.node_id, got.max_dmips, got.architecture, got.architecture_variant, got.os_version) == \
        ("iam-node", 29400, "arm64", "v8", "6.6-aos")
    assert (merged.total_ram, merged.os_name, merged.warnings) == (4 << 30, "linux", ())
    assert source_of(merged, "maxDMIPS") == IAM_SOURCE and source_of(merged, "totalRAM") == IAM_SOURCE


def test_an_operator_value_overrides_iam_with_a_warning_naming_both() -> None:
    merged = merge_node_info(config(nodeId="board-7", maxDMIPS=1000), IAM)
    assert (merged.config.node_id, merged.config.max_dmips) == ("board-7", 1000)
    assert merged.warnings == ("nodeId 'board-7' from the config overrides IAM's 'iam-node'",
                               "maxDMIPS 1000 from the config overrides IAM's 29400")
    assert source_of(merged, "maxDMIPS") == "config (operator)"


def test_an_operator_value_equal_to_iams_is_no_warning() -> None:
    assert merge_node_info(config(nodeId="iam-node"), IAM).warnings == ()


def test_fields_iam_leaves_unset_stay_for_the_probes() -> None:
    merged = merge_node_info(config(), IamNodeInfo(node_id="only-id"))
    assert merged.config.node_id == "only-id"
    assert (merged.config.max_dmips, merged.config.architecture, merged.config.os_version) == (None, None, None)
    assert (merged.total_ram, merged.os_name) == (None, None)
    assert source_of(merged, "maxDMIPS") is None


def test_an_empty_variant_from_the_operator_is_a_value_not_unset() -> None:
    merged = merge_node_info(config(architectureVariant=""), IAM)
    assert merged.config.architecture_variant == ""
    assert merged.warnings == ("architectureVariant '' from the config overrides IAM's 'v8'",)


def test_a_value_over_cms_limit_is_not_taken_from_iam() -> None:
    merged = merge_node_info(config(), IamNodeInfo(node_id="n" * 65, architecture="x" * 17))
    assert merged.config.node_id == "" and merged.config.architecture is None
    assert [w.split(" is over")[0][:12] for w in merged.warnings] == ["IAM's nodeId", "IAM's archit"]
