"""IAM's certificate URLs: file URLs become paths; a PKCS#11 key is one clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_sm.agent.errors import NotSupported
from aos_sm.agent.iam.certurl import UnusableCertUrl, certificate_files, file_path, file_url
from aos_sm.agent.iam.port import IamCertInfo


def test_file_urls_are_paths() -> None:
    assert file_path("file:///var/aos/crypt/sm/cert.pem", "certificate", "sm") == Path("/var/aos/crypt/sm/cert.pem")
    assert file_path("file:/a%20b/key.pem", "key", "sm") == Path("/a b/key.pem")
    assert file_path(file_url(Path("/tmp/x.pem")), "certificate", "sm") == Path("/tmp/x.pem")


def test_a_pkcs11_key_is_refused_naming_the_certificate_type() -> None:
    info = IamCertInfo("sm", "file:///c.pem", "pkcs11:token=aos;object=sm;type=private?pin-value=1234")
    with pytest.raises(UnusableCertUrl) as caught:
        certificate_files(info)
    message = str(caught.value)
    assert isinstance(caught.value, NotSupported)
    assert message.startswith("IAM certificate 'sm': the key is a PKCS#11 object")
    assert "grpcio cannot sign with a PKCS#11 key" in message and "\n" not in message


@pytest.mark.parametrize("url", ["https://iam/cert.pem", "file://otherhost/c.pem", "relative.pem", ""])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(UnusableCertUrl, match="is not file:///path"):
        file_path(url, "certificate", "sm")
