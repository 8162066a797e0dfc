"""`ebmesh ca init` and `ebmesh ca show`: what they write and print, and their exit codes."""

from __future__ import annotations

import re

import pytest

from ebmesh.cli import main
from ebmesh.mtls import IdentityStore
from tests.support import pki


def test_init_creates_an_issuer_named_after_the_directory(tmp_path, capsys):
    assert main(["ca", "init", str(tmp_path / "shop")]) == 0
    out = capsys.readouterr().out
    assert "issuer for spiffe://shop (ecdsa-p256)" in out and "bundle.pem holds 1 CA(s)" in out
    store = IdentityStore(tmp_path / "shop")
    assert store.issuer().trust_domain == "shop"
    assert store.load("api", "spiffe://shop/api").spiffe_id == "spiffe://shop/api"


def test_init_with_a_trust_domain_and_ed25519(tmp_path, capsys):
    code = main(
        [
            "ca",
            "init",
            str(tmp_path / "x"),
            "--trust-domain",
            "shop.example",
            "--key-type",
            "ed25519",
            "--days",
            "30",
        ]
    )
    assert code == 0
    issuer = IdentityStore(tmp_path / "x").issuer()
    assert issuer.trust_domain == "shop.example"
    lifetime_days = (
        issuer.certificate.not_valid_after_utc - issuer.certificate.not_valid_before_utc
    ).days
    assert lifetime_days == 30


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--trust-domain", "Not Valid"], "is not a SPIFFE trust domain"),
        ([], None),  # a second init of the same directory
    ],
)
def test_init_refusals_exit_2_with_the_reason(tmp_path, capsys, arguments, message):
    directory = str(tmp_path / "shop")
    if message is None:
        assert main(["ca", "init", directory]) == 0
        message = "already has an issuer"
    capsys.readouterr()
    assert main(["ca", "init", directory, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_init_of_a_directory_whose_name_is_no_trust_domain(tmp_path, capsys):
    assert main(["ca", "init", str(tmp_path / "My_Mesh")]) == 2
    assert "give one with --trust-domain" in capsys.readouterr().err


def test_show_lists_the_cas_the_issuer_and_the_svids_with_expiries(tmp_path, capsys):
    store = IdentityStore.create(tmp_path / "shop", "shop.example")
    store.load("api", "spiffe://shop.example/api")
    issuer = store.issuer()
    pki.with_other_key(
        pki.make_leaf(pki.Ca(issuer.certificate, issuer.key), "spiffe://shop.example/db")
    ).write(store.directory, "db")
    capsys.readouterr()
    assert main(["ca", "show", str(store.directory)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"trusted\s+bundle.pem\s+spiffe://shop.example\n.*expires 20\d\d-.*\(in 365d\): valid", out
    )
    assert re.search(r"issuer\s+ca.pem\s+spiffe://shop.example", out)
    assert re.search(r"SVID\s+svid/api.pem\s+spiffe://shop.example/api\n.*\(in 60m\): valid", out)
    assert re.search(r"SVID\s+svid/db.pem\s+spiffe://shop.example/db\n.*: key does not match", out)


def test_show_without_an_issuer_says_where_svids_come_from(tmp_path, capsys):
    (tmp_path / "bundle.pem").write_bytes(pki.make_ca().pem)
    assert main(["ca", "show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no issuer: SVIDs must be delivered into svid/" in out and "no SVIDs yet" in out


def test_show_of_a_missing_directory_exits_2(tmp_path, capsys):
    assert main(["ca", "show", str(tmp_path / "nothing")]) == 2
    assert "no identity directory at" in capsys.readouterr().err


def test_ca_without_a_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["ca"])
    assert exited.value.code == 2
