"""The SSRF rule, address by address: every range the rule names, without a packet sent anywhere."""

from __future__ import annotations

import ipaddress

import pytest
from structlog.testing import capture_logs

from notifyq.callbacks.addresses import Allowed, Refused, check, refusal
from notifyq.callbacks.builtin import CallbackTask
from notifyq.config import Settings

REFUSED = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "240.0.0.1",
    "255.255.255.255",
    "224.0.0.1",
    "198.18.0.1",
    "192.0.0.8",
    "::1",
    "::",
    "::ffff:127.0.0.1",  # mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fd00::1",
    "fe80::1",
    "fe80::1%2",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
    "::ffff:0:7f00:1",
    "::ffff:0:a9fe:a9fe",  # 169.254.169.254
    "3fff::1",  # documentation
    "5f00::1",  # outside global unicast (2000::/3)
    "100:0:0:1::1",
    "192.88.99.1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("text", REFUSED)
def test_every_address_that_is_not_globally_routable_is_refused(text: str) -> None:
    assert refusal(ipaddress.ip_address(text)) is not None


@pytest.mark.parametrize("text", ALLOWED)
def test_global_addresses_pass_wrapped_or_not(text: str) -> None:
    assert refusal(ipaddress.ip_address(text)) is None


def test_a_name_is_refused_if_any_of_its_addresses_is() -> None:
    with pytest.raises(Refused, match=r"hooks.example resolves to 10.0.0.1: not a globally routable"):
        check("hooks.example", ["8.8.8.8", "10.0.0.1"], Allowed())
    with pytest.raises(Refused, match="no address"):
        check("hooks.example", [], Allowed())


def test_the_allow_list_exempts_networks_and_host_names() -> None:
    allowed = Allowed.parse(["127.0.0.0/8", " receiver.internal. ", "fd00::/8", ""])
    assert check("local", ["127.0.0.1"], allowed) == [ipaddress.ip_address("127.0.0.1")]
    assert check("Receiver.Internal", ["10.1.2.3"], allowed)
    assert check("v6", ["fd00::5"], allowed)
    with pytest.raises(Refused):
        check("other", ["10.1.2.3"], allowed)


@pytest.mark.parametrize("entry", ["not a host!", "http://x", "10.0.0.0/33"])
def test_a_bad_allow_list_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match="neither a CIDR"):
        Allowed.parse([entry])


@pytest.mark.parametrize(
    ("entries", "risk"),
    [
        (["0.0.0.0/0"], "large part of the address space"),
        (["::/0"], "large part of the address space"),
        (["169.254.0.0/16"], "cloud metadata"),
        (["fd00:ec2::/32"], "cloud metadata"),
        (["::ffff:0:0/96"], "large part of the address space"),  # every IPv4 address, wrapped
        (["64:ff9b::/96"], "large part of the address space"),
        (["2002::/16"], "large part of the address space"),
        (["::ffff:169.254.0.0/112"], "cloud metadata"),
        (["2002:a9fe::/32"], "cloud metadata"),  # 6to4 of 169.254.0.0/16
        (["metadata.google.internal"], "cloud metadata"),
        (["::ffff:10.0.0.0/104", "2002:0a00::/24"], None),  # 10.0.0.0/8, wrapped: on premises
        (["10.0.0.0/8", "fd12:3456::/32", "receiver.internal"], None),
    ],
)
def test_an_allow_list_that_undoes_the_rule_is_warned_of_at_start(
    entries: list[str], risk: str | None
) -> None:
    found = Allowed.parse(entries).risks()
    assert (risk is None and not found) or (risk is not None and len(found) == 1 and risk in found[0])
    with capture_logs() as logged:
        CallbackTask(Settings(dsn="postgresql://x@127.0.0.1/db", callback_allow=tuple(entries)), "notifyq-test")
    warned = [e for e in logged if e["event"] == "callback_allow_is_wide"]
    assert len(warned) == (0 if risk is None else 1)
